"""Causal tracing: which hidden states carry a fact (Meng et al. 2022, "Locating and Editing
Factual Associations in GPT", §2.1 and Appendix B).

Three runs of the model on a factual prompt ("The Eiffel Tower is located in the city of"):

* clean: the probability p* of the object's first token (" Paris"), or of the model's own
  top next token when no target is given;
* corrupted: Gaussian noise of scale ν added to the subject tokens' embeddings, ``samples``
  draws from a fixed seed; p_corrupted is the mean over draws;
* restored: the corrupted run, but one state at (token t, layer l) set back to its clean
  value. The *indirect effect* IE(t, l) = p_restored(t, l) − p_corrupted (ROME eq. 1–2).

Kinds of state: ``hidden`` (block l's output, the residual stream), ``mlp`` and ``attn``
(the MLP / attention output, restored together over a window of ``window`` layers centred on l,
as ROME's figures 1e–f). ν = 3 × the standard deviation of subject-token embeddings over
ROME's 1,209 known facts (shipped in ``llm_edit/data/known_1000.json``), cached per model.

Speed (this is what makes a trace take seconds on a CPU): all restored runs of one trace go
through the model in batches, and a run that restores at layer l skips the blocks below its
lowest restored layer (they would recompute the corrupted run's outputs exactly;
``hooks.replay_blocks``). Positions before the subject are not run: by causality the corrupted
and clean states there are identical, so restoring them changes nothing and IE = 0 exactly.

Deviations from ROME's code, none of which changes the quantity measured: the probability is
that of the object's *first* token as in ROME; ROME draws noise with numpy's RandomState(1),
here with a seeded torch generator; the LM head is applied only at the last position.

Average tracing (``trace_facts``) averages IE per layer at the subject's last token (where ROME
edits) and at the prompt's last token over facts the model answers correctly; the layer
``auto`` resolves to is the peak of the average MLP effect at the subject's last token.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Iterable

import torch

from ..core.arch import arch_of, num_layers
from ..core.files import DATA_DIR, write_json
from ..core.head import head_of
from ..core.hooks import Trace
from ..core.models import cache_home, fingerprint
from ..core.text import SubjectNotFound, subject_span, target_ids
from .passes import SubjectNoise, last_probs, plan_passes, restore_modules, restored_probs, tensor_of

KINDS = {"hidden": "hidden state (block output)", "mlp": "MLP output", "attn": "attention output"}
KNOWNS = DATA_DIR / "known_1000.json"


def known_facts(path: str | Path | None = None) -> list[dict]:
    """Facts to trace as ``{"prompt", "subject", "target"}`` dicts: ROME's known facts (the
    shipped copy by default; the object is its ``attribute``) or any file of facts in llm-edit's
    shapes (``target``, ``target_true``)."""
    from ..core.files import FactFileError, records

    source = Path(path or KNOWNS)
    out = []
    for line, obj in records(source):
        if not isinstance(obj, dict):
            raise FactFileError(str(source), line, None, "expected a JSON object")
        fact = {"prompt": obj.get("prompt"), "subject": obj.get("subject"),
                "target": obj.get("attribute") or obj.get("target") or obj.get("target_true")}
        for key, value in fact.items():
            if not isinstance(value, str) or not value.strip():
                name = "target" if key == "target" and "attribute" not in obj else key
                raise FactFileError(str(source), line, name, "is missing or not a non-empty string")
        if "{}" not in fact["prompt"] and fact["subject"] not in fact["prompt"]:
            raise FactFileError(str(source), line, "subject",
                                f"{fact['subject']!r} does not occur in the prompt {fact['prompt']!r}")
        out.append(fact)
    if not out:
        raise FactFileError(str(source), None, None, "holds no facts")
    return out


def check_settings(*, prompt: str | None = None, subject: str | None = None, target: str | None = None,
                   samples: int = 10, window: int = 10, noise: float | None = None, limit: int | None = None,
                   batch_size: int = 256) -> None:
    """Raise ``ValueError`` for settings tracing cannot use (called before the model loads)."""
    for name, value in (("samples", samples), ("window", window), ("batch_size", batch_size), ("limit", limit)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if noise is not None and not (noise >= 0 and math.isfinite(noise)):  # 0: the identity run tests use
        raise ValueError(f"noise must be a standard deviation (>= 0), got {noise}")
    if prompt is not None and prompt.count("{}") > 1:
        raise ValueError(f"the prompt {prompt!r} holds '{{}}' more than once; it marks where the subject goes")
    if subject is not None and not subject.strip():
        raise ValueError("the subject is empty")
    if target is not None and not target.strip():
        raise ValueError("the target is empty (omit --target to trace the model's own top prediction)")
    if prompt is not None and subject is not None:
        _template(prompt, subject)


def _template(prompt: str, subject: str) -> str:
    if "{}" in prompt:
        return prompt
    if subject not in prompt:
        raise SubjectNotFound(f"the subject {subject!r} does not occur in the prompt {prompt!r}")
    return prompt.replace(subject, "{}", 1)


def _embed_fingerprint(model, tok) -> str:
    spec = arch_of(model)
    h = hashlib.sha256(fingerprint(model, lambda n: n.startswith(spec.embed + ".")).encode())
    h.update(str(len(tok)).encode() + (tok.name_or_path or "").encode())
    return h.hexdigest()


@torch.no_grad()
def noise_scale(model, tok, subjects: Iterable[str] | None = None, factor: float = 3.0,
                use_cache: bool = True) -> float:
    """ν = factor × std of the embedding vectors' entries over all subject tokens (ROME's
    ``collect_embedding_std`` over the known facts' subjects, each tokenized on its own)."""
    subjects = list(subjects) if subjects is not None else [f["subject"] for f in known_facts()]
    digest = hashlib.sha256("\n".join(subjects).encode()).hexdigest()[:16]
    path = cache_home() / "locate" / _embed_fingerprint(model, tok)[:16] / f"noise-{digest}.json"
    if use_cache and path.is_file():
        return factor * json.loads(path.read_text())["std"]
    embed = model.get_submodule(arch_of(model).embed)
    device = next(model.parameters()).device
    ids = [i for s in subjects for i in tok(s, add_special_tokens=False)["input_ids"]]
    vectors = embed(torch.tensor(ids, device=device)).float()
    std = vectors.std().item()
    if use_cache:
        write_json(path, {"std": std, "subjects": len(subjects), "subjects_sha256_16": digest, "tokens": len(ids)})
    return factor * std


@dataclass
class TraceResult:
    """One traced prompt. ``scores[kind][t][l]`` is p_restored at (token t, layer l); positions
    that were not run (before the subject, or outside ``positions``) hold ``None``."""

    prompt: str
    subject: str
    target: str
    target_token_id: int
    tokens: list[str]
    subject_first: int
    subject_last: int
    p_clean: float
    p_corrupted: float
    scores: dict[str, list[list[float | None]]]
    noise_scale: float
    samples: int
    window: int
    seed: int
    seconds: float = 0.0
    correct: bool = True  # the clean run's top token is the target's first token

    def indirect_effect(self, kind: str) -> torch.Tensor:
        """IE(t, l) = p_restored − p_corrupted, NaN where not run (0 before the subject)."""
        rows = []
        for t, row in enumerate(self.scores[kind]):
            if t < self.subject_first:
                rows.append([0.0] * len(row))
            else:
                rows.append([math.nan if v is None else v - self.p_corrupted for v in row])
        return torch.tensor(rows, dtype=torch.float64)

    def to_dict(self) -> dict:
        return asdict(self)

    def plot(self, path: str | Path, kind: str) -> None:
        from .plots import plot_trace

        plot_trace(self, kind, path)


def _wanted_positions(positions, first: int, last: int, n_tok: int) -> set[int]:
    if positions is None:
        return set(range(first, n_tok))
    named = {"last_subject": last, "last": n_tok - 1}
    wanted = {named[p] if isinstance(p, str) else (p + n_tok if p < 0 else p) for p in positions}
    if not wanted <= set(range(n_tok)):
        raise ValueError(f"positions {list(positions)} outside the prompt's {n_tok} tokens")
    return wanted


@torch.no_grad()
def trace(model, tok, prompt: str, subject: str, target: str | None = None, *,
          kinds: Iterable[str] = ("hidden", "mlp", "attn"), samples: int = 10, window: int = 10,
          noise: float | None = None, seed: int = 0, positions: Iterable[int | str] | None = None,
          batch_size: int = 256, reuse_prefix: bool = True, require_correct: bool = False,
          progress: bool = False) -> TraceResult:
    """Trace one fact. ``prompt`` holds ``{}`` for the subject or contains it verbatim.

    ``positions`` limits the restored runs to some tokens (indices, or ``"last_subject"`` /
    ``"last"``); by default every token from the subject's first on. ``batch_size`` is the
    number of sequences per forward pass (noise draws × restored states); ``reuse_prefix=False``
    recomputes every run over the whole prompt (slower, the same numbers up to rounding).
    With ``require_correct``, a prompt whose clean top token is not the target's first token
    returns right after the clean run (``correct=False``, no scores)."""
    import time

    kinds = list(kinds)
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    check_settings(prompt=prompt, subject=subject, target=target, samples=samples, window=window, noise=noise,
                   batch_size=batch_size)
    t_start = time.perf_counter()
    spec = arch_of(model)
    n_layers = num_layers(model)
    device = next(model.parameters()).device
    ids, first, last = subject_span(tok, _template(prompt, subject), subject)
    n_tok = len(ids)
    input_ids = torch.tensor([ids], device=device)
    lm_head, _ = head_of(model)  # with Gemma 2's soft-capping
    blocks = [spec.layer(i) for i in range(n_layers)]
    restorable = sorted({m for kind in kinds for l in range(n_layers)
                         for m in restore_modules(spec, kind, l, n_layers, window)})
    result = partial(TraceResult, prompt=_template(prompt, subject).replace("{}", subject, 1), subject=subject,
                     tokens=[tok.decode([i]) for i in ids], subject_first=first, subject_last=last, samples=samples,
                     window=window, seed=seed)

    # 1. clean run: every state that may be restored, and the target token
    with Trace(model, restorable + [spec.final_norm], retain_output=True, stop=True) as tr:
        model(input_ids=input_ids)
    clean = {m: tensor_of(tr[m].output)[0] for m in restorable}
    probs = last_probs(lm_head, tr[spec.final_norm].output)[0]
    top = int(probs.argmax())
    target_id = target_ids(tok, target)[0] if target else top
    p_clean = probs[target_id].item()
    if require_correct and top != target_id:
        return result(target=tok.decode([target_id]), target_token_id=target_id, p_clean=p_clean,
                      p_corrupted=math.nan, scores={}, noise_scale=math.nan,
                      seconds=round(time.perf_counter() - t_start, 3), correct=False)

    # 2. corrupted run: its block outputs are replayed below each restored run's lowest layer
    scale = noise_scale(model, tok) if noise is None else float(noise)
    d_model = model.get_submodule(spec.embed).weight.shape[1]
    generator = torch.Generator().manual_seed(seed)
    draws = (torch.randn(samples, last - first + 1, d_model, generator=generator) * scale).to(device)
    corrupt = SubjectNoise(draws, spec.embed, first, last)
    with Trace(model, [spec.embed] + blocks + [spec.final_norm], edit_output=corrupt, retain_output=True,
               stop=True) as tr:
        model(input_ids=input_ids.expand(samples, -1))
    corrupted_blocks = [tr[b].output for b in blocks]
    p_corrupted = last_probs(lm_head, tr[spec.final_norm].output)[:, target_id].mean().item()

    # 3. restored runs, batched into passes
    wanted = _wanted_positions(positions, first, last, n_tok)
    passes = plan_passes(spec, kinds, sorted(t for t in wanted if t >= first), n_layers, window,
                         reuse_prefix=reuse_prefix, runs_per_pass=max(1, batch_size // samples))
    restored = restored_probs(model, input_ids, passes, clean, corrupted_blocks, corrupt, target_id,
                              progress=progress)
    scores = {kind: [[restored.get((kind, t, l)) if t >= first else None for l in range(n_layers)]
                     for t in range(n_tok)] for kind in kinds}
    for kind in kinds:  # before the subject a restored run *is* the corrupted run
        for t in range(first):
            if t in wanted:
                scores[kind][t] = [p_corrupted] * n_layers
    return result(target=tok.decode([target_id]), target_token_id=target_id, p_clean=p_clean,
                  p_corrupted=p_corrupted, scores=scores, noise_scale=scale,
                  seconds=round(time.perf_counter() - t_start, 3), correct=(top == target_id))


