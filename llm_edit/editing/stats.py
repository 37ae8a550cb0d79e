"""Second-moment statistics C = E[k kᵀ] of an edited module's keys, cached on disk.

ROME and MEMIT estimate C from 100,000 Wikipedia samples. The hub is not always reachable, so
the corpus is a choice (recipe key ``stats_corpus``):

* ``shipped`` (the recipes' default): ``llm_edit/data/stats_corpus.jsonl``, text sampled once
  from the default model (SmolLM2-135M-Instruct) exactly as ``model-samples`` samples it, and
  shipped, so a first edit needs one forward pass over it instead of ten minutes of sampling on
  a CPU (``data/README.md`` says how it was made; README, "Statistics", what it changes);
* ``model-samples``: text sampled from the model itself (ancestral sampling at temperature 1,
  a fixed seed, from one-word starts). The model's own samples follow its pre-training
  distribution better than any one domain's text at hand, but sampling them is slow.
* ``file:PATH``: a local ``.txt`` (paragraphs separated by blank lines) or ``.json``/``.jsonl``
  file whose records have a ``text`` field (or ``question``/``answer``, as TOFU's).
* ``hf:NAME[:CONFIG]``: a hub dataset's ``text`` field, streamed (needs the hub).
* ``identity``: C = I, ROME without the second-moment adjustment (an ablation).

A file holds C for one (model weights that the keys depend on, module, corpus, token count),
with a JSON manifest in its safetensors metadata.
"""
from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Iterator

import torch

from ..core.arch import arch_of
from ..core.files import DATA_DIR, run_info, sha256_file
from ..core.hooks import Trace
from ..core.models import cache_home, fingerprint
from ..core.text import leading_special_ids

_SAMPLE_STARTS = ["The", "In", "A", "It", "This", "When", "He", "She", "We", "After", "There",
                  "One", "Many", "According", "During", "His"]


def key_fingerprint(model, module_name: str) -> str:
    """Hash of the weights that the keys of ``module_name`` depend on: every parameter outside
    the transformer blocks, the blocks below it, and its own block except the module itself.
    Editing that module (as ROME does) therefore keeps its statistics valid."""
    spec = arch_of(model)
    layer = int(module_name[len(spec.layers) + 1:].split(".")[0])

    def include(name: str) -> bool:
        if not name.startswith(spec.layers + "."):
            return True
        i = int(name[len(spec.layers) + 1:].split(".")[0])
        return i < layer or (i == layer and not name.startswith(module_name + "."))

    return fingerprint(model, include)


SHIPPED_CORPUS = DATA_DIR / "stats_corpus.jsonl"


def corpus_id(corpus: str, tok=None) -> str:
    """The corpus's part of the statistics cache's file name. A packed corpus (``file:``, ``hf:``)
    read by a tokenizer that puts special tokens before text is named with them: its rows start
    with them since 2026-12-07, and statistics cached from rows without them are not reused."""
    if corpus == "shipped":
        return f"shipped-{sha256_file(SHIPPED_CORPUS)[:16]}"
    lead = leading_special_ids(tok) if tok is not None else []
    framed = "-lead" + "_".join(map(str, lead)) if lead else ""
    if corpus.startswith("file:"):
        path = Path(corpus[5:])
        if not path.is_file():
            raise FileNotFoundError(f"stats_corpus {corpus!r}: no such file")
        return f"file-{sha256_file(path)[:16]}{framed}"
    if corpus.startswith("hf:"):
        return corpus.replace("/", "_").replace(":", "-") + framed
    return corpus.replace("/", "_").replace(":", "-")


def _texts_from_file(path: Path) -> Iterator[str]:
    raw = path.read_text(encoding="utf-8")
    if path.suffix in (".json", ".jsonl"):
        records = json.loads(raw) if raw.lstrip().startswith("[") else [
            json.loads(line) for line in raw.splitlines() if line.strip()]
        for r in records:
            if isinstance(r, dict) and "text" in r:
                yield r["text"]
            elif isinstance(r, dict) and "question" in r and "answer" in r:
                yield f"{r['question']} {r['answer']}"
            else:
                raise ValueError(f"{path}: records need a 'text' field (or 'question' and 'answer')")
    else:
        yield from (p.strip() for p in raw.split("\n\n") if p.strip())


def _sequences(model, tok, corpus: str, n_tokens: int, seq_len: int, seed: int) -> Iterator[list[int]]:
    """Yield token-id sequences of at most ``seq_len`` until ``n_tokens`` are covered."""
    if corpus == "model-samples":
        yield from model_samples(model, tok, n_tokens, seq_len, seed)
        return
    if corpus == "shipped":  # one sample, one sequence, as model-samples draws them (no packing)
        count = 0
        for text in _texts_from_file(SHIPPED_CORPUS):
            ids = tok(text)["input_ids"][:seq_len]
            yield ids
            count += len(ids)
            if count >= n_tokens:
                return
        return
    if corpus.startswith("file:"):
        texts = _texts_from_file(Path(corpus[5:]))
    elif corpus.startswith("hf:"):
        from datasets import load_dataset

        name, _, config = corpus[3:].partition(":")
        texts = (r["text"] for r in load_dataset(name, config or None, split="train", streaming=True))
    else:
        raise ValueError(f"unknown stats_corpus {corpus!r}: use shipped, model-samples, file:PATH, hf:NAME[:CONFIG] "
                         "or identity")
    # pack documents into full-length sequences, as ROME's loader does; each row starts with what
    # the tokenizer puts before any text (Gemma's BOS), since every prompt the model is edited on
    # does and keys read right after a missing BOS are not keys the model sees in use
    lead = leading_special_ids(tok)
    width = max(1, seq_len - len(lead))
    buffer: list[int] = []
    for text in texts:
        buffer += tok(text + "\n\n", add_special_tokens=False)["input_ids"]
        while len(buffer) >= width:
            yield lead + buffer[:width]
            buffer = buffer[width:]
    if buffer:
        yield lead + buffer


def model_samples(model, tok, n_tokens: int, seq_len: int, seed: int, batch: int = 64,
                  desc: str = "sampling text for statistics") -> Iterator[list[int]]:
    """Sequences sampled from the model, cached per (model, seed, length).

    Sampling always runs in whole batches from one seeded stream, so a smaller request is a
    prefix of a larger one and is served from any cached file that holds enough sequences."""
    n_seqs = math.ceil(n_tokens / seq_len)
    stem = f"{fingerprint(model)[:16]}-samples-s{seed}-L{seq_len}-b{batch}"
    folder = cache_home() / "corpora"
    for cached in sorted(folder.glob(stem + "-n*.json")):
        if int(cached.stem.rsplit("-n", 1)[1]) >= n_seqs:
            try:
                seqs = json.loads(cached.read_text())
                if not (isinstance(seqs, list) and len(seqs) >= n_seqs
                        and all(isinstance(s, list) and all(isinstance(t, int) for t in s) for s in seqs)):
                    raise ValueError("not a list of token-id lists of the length its name says")
            except (OSError, UnicodeDecodeError, ValueError) as e:
                warnings.warn(f"{cached}: corrupt sample cache ({e}); sampling again", stacklevel=2)
                cached.unlink(missing_ok=True)
                continue
            yield from seqs[:n_seqs]
            return
    n_batches = math.ceil(n_seqs / batch)
    path = folder / f"{stem}-n{n_batches * batch}.json"
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    out: list[list[int]] = []
    side, tok.padding_side = tok.padding_side, "left"
    gen = torch.Generator().manual_seed(seed)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                tqdm(total=n_batches * batch * seq_len, unit="tok", desc=desc) as bar:
            torch.manual_seed(seed)
            for _ in range(n_batches):
                k = batch
                starts = [_SAMPLE_STARTS[i] for i in torch.randint(len(_SAMPLE_STARTS), (k,), generator=gen)]
                enc = tok(starts, return_tensors="pt", padding=True).to(device)
                ids = model.generate(**enc, do_sample=True, top_p=1.0, top_k=0, max_new_tokens=seq_len,
                                     pad_token_id=tok.pad_token_id)
                for row, m in zip(ids.tolist(), enc["attention_mask"].tolist()):
                    row = row[len(m) - sum(m):][:seq_len]  # drop left padding
                    if tok.eos_token_id in row[1:]:
                        row = row[: row.index(tok.eos_token_id, 1) + 1]
                    out.append(row)
                bar.update(k * seq_len)
    finally:
        tok.padding_side = side
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..core.files import atomic_write_text

    atomic_write_text(path, json.dumps(out))
    yield from out[:n_seqs]


def second_moment(model, tok, module_name: str, *, corpus: str = "model-samples", n_tokens: int = 50_000,
                  seq_len: int = 128, seed: int = 0, batch_size: int = 8, use_cache: bool = True,
                  ) -> tuple[torch.Tensor | None, dict]:
    """Return (C, manifest): C = E[k kᵀ] over ``n_tokens`` keys of ``module_name`` (float32, CPU),
    or None for ``corpus="identity"``."""
    if corpus == "identity":
        return None, {"corpus": "identity"}
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    fp = key_fingerprint(model, module_name)
    cid = corpus_id(corpus, tok)
    path = cache_home() / "stats" / fp[:16] / f"{module_name}__{cid}__n{n_tokens}_L{seq_len}_s{seed}.safetensors"
    if use_cache and path.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as f:
                manifest = json.loads(f.metadata()["manifest"])
            cov = load_file(str(path))["second_moment"]
            d = cov.shape[0] if cov.dim() == 2 else -1
            if cov.shape != (d, d) or not torch.isfinite(cov).all():
                raise ValueError(f"second_moment is {tuple(cov.shape)}, not a finite square matrix")
            return cov, manifest
        except (SafetensorError, OSError, KeyError, TypeError, ValueError) as e:  # truncated or edited by hand
            warnings.warn(f"{path}: corrupt statistics cache ({e}); computing them again", stacklevel=2)
            path.unlink(missing_ok=True)

    device = next(model.parameters()).device
    t0 = time.perf_counter()
    total, count = None, 0
    what = {"shipped": "the prose shipped with llm-edit", "model-samples": "text sampled from the model"}.get(
        corpus, corpus)
    print(f"llm-edit: computing the key statistics of {module_name} from {n_tokens:,} tokens of {what}: once per "
          f"model, layer and corpus, then cached in {path.parent}"
          + (" (sampling the text first takes about ten minutes on 2 CPU cores; stats_corpus=shipped skips it)"
             if corpus == "model-samples" else ""), file=sys.stderr)
    seqs = _sequences(model, tok, corpus, n_tokens, seq_len, seed)
    if corpus == "model-samples":  # sample first, under its own bar, so the key pass's bar counts keys only
        seqs = iter(list(seqs))
    with tqdm(total=n_tokens, unit="tok", desc=f"key statistics of {module_name}") as bar:
        done = False
        while not done:
            chunk = [s for _, s in zip(range(batch_size), seqs)]
            if not chunk:
                break
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(chunk):
                ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
            with torch.no_grad(), Trace(model, [module_name], retain_input=True, stop=True) as tr:
                model(input_ids=ids.to(device), attention_mask=mask.to(device))
            keys = tr[module_name].input[mask.to(device).bool()].double()
            if count + len(keys) >= n_tokens:
                keys, done = keys[: n_tokens - count], True
            total = keys.T @ keys if total is None else total + keys.T @ keys
            count += len(keys)
            bar.update(len(keys))
        bar.total = count  # a corpus may hold fewer tokens than asked: end the bar at 100%, not at 93%
        bar.refresh()
    if count == 0:
        raise ValueError(f"stats_corpus {corpus!r} gave no tokens")
    cov = (total / count).float().cpu()
    manifest = {"model_key_fingerprint": fp, "module": module_name, "corpus": corpus, "corpus_id": cid,
                "n_tokens": count, "n_tokens_requested": n_tokens, "seq_len": seq_len, "seed": seed,
                "seconds": round(time.perf_counter() - t0, 2), **run_info()}
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        save_file({"second_moment": cov.contiguous()}, str(tmp), metadata={"manifest": json.dumps(manifest)})
        tmp.replace(path)
    return cov, manifest
