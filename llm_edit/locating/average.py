"""Average tracing: causal tracing over many known facts, averaged per layer (ROME Fig. 2), and
``auto_layers``, which picks the edited layers where the MLPs' effect at the last subject token
peaks."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Iterable

from ..core.arch import num_layers
from ..core.files import write_json
from ..core.models import cache_home, fingerprint
from ..core.text import SubjectNotFound
from .trace import known_facts, noise_scale, trace


@dataclass
class AverageTrace:
    """Average indirect effect per layer, ``effects[kind][position]`` (position: ``last_subject``
    or ``last``), over ``n_facts`` facts the model answers correctly."""

    effects: dict[str, dict[str, list[float]]]
    n_facts: int
    n_tried: int
    kinds: list[str]
    samples: int
    window: int
    seed: int
    noise_scale: float
    facts_sha256: str
    model_fingerprint: str
    seconds: float
    per_fact: list[dict] = field(default_factory=list)

    def peak(self, kind: str = "mlp", position: str = "last_subject") -> int:
        values = self.effects[kind][position]
        return max(range(len(values)), key=lambda l: values[l])

    def layers(self, n: int = 1, kind: str = "mlp") -> list[int]:
        """The ``n`` layers ending at the peak (MEMIT edits a range ending where the effect peaks)."""
        top = self.peak(kind)
        return list(range(max(0, top - n + 1), top + 1))

    def to_dict(self) -> dict:
        return asdict(self)


def _facts_sha256(facts: list[dict]) -> str:
    blob = "".join(json.dumps(f, sort_keys=True) + "\n" for f in facts)
    return hashlib.sha256(blob.encode()).hexdigest()


def trace_facts(model, tok, facts: list[dict], *, kinds: Iterable[str] = ("mlp",), limit: int | None = 50,
                samples: int = 10, window: int = 10, seed: int = 0, only_correct: bool = True,
                batch_size: int = 256, progress: bool = True, use_cache: bool = True) -> AverageTrace:
    """Average tracing over ``facts`` (dicts with prompt, subject, target): the first ``limit``
    facts whose object the model predicts (its top next token is the object's first token)
    are traced at the subject's last token and the last token. Cached per (model, facts,
    settings) under ``$LLM_EDIT_HOME/cache/locate``."""
    import time

    kinds = list(kinds)
    digest = _facts_sha256(facts)
    fp = fingerprint(model)
    # one file per setting; a cached run that traced more kinds serves a request for fewer
    settings = [digest, limit, samples, window, seed, only_correct]
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # traced with the soft-cap since 2026-12-03 (core.head); earlier files lacked it
        settings.append({"final_logit_softcapping": cap})
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()
    path = cache_home() / "locate" / fp[:16] / f"average-{key[:16]}.json"
    if use_cache and path.is_file():
        cached = AverageTrace(**json.loads(path.read_text()))
        if set(kinds) <= set(cached.kinds):
            return cached
    scale = noise_scale(model, tok)
    t0 = time.perf_counter()
    n_layers = num_layers(model)
    sums = {k: {"last_subject": [0.0] * n_layers, "last": [0.0] * n_layers} for k in kinds}
    per_fact, tried = [], 0
    from tqdm.auto import tqdm

    bar = tqdm(total=limit or len(facts), desc="average tracing", unit="fact", disable=not progress)
    for fact in facts:
        if limit is not None and len(per_fact) >= limit:
            break
        tried += 1
        try:
            result = trace(model, tok, fact["prompt"], fact["subject"], fact["target"], kinds=kinds, samples=samples,
                           window=window, noise=scale, seed=seed, positions=["last_subject", "last"],
                           batch_size=batch_size, require_correct=only_correct)
        except SubjectNotFound:
            continue
        if only_correct and not result.correct:
            continue
        record = {"prompt": result.prompt, "subject": fact["subject"], "target": fact["target"],
                  "p_clean": result.p_clean, "p_corrupted": result.p_corrupted}
        n_tok = len(result.tokens)
        for kind in kinds:
            ie = result.indirect_effect(kind)
            for name, t in (("last_subject", result.subject_last), ("last", n_tok - 1)):
                row = ie[t].tolist()
                sums[kind][name] = [a + b for a, b in zip(sums[kind][name], row)]
                record[f"{kind}_{name}"] = row
        per_fact.append(record)
        bar.update(1)
    bar.close()
    if not per_fact:
        raise ValueError("no fact could be traced: the model answers none of them correctly "
                         "(or none has its subject in the prompt)")
    n = len(per_fact)
    effects = {k: {pos: [v / n for v in vals] for pos, vals in by_pos.items()} for k, by_pos in sums.items()}
    avg = AverageTrace(effects=effects, n_facts=n, n_tried=tried, kinds=kinds, samples=samples, window=window,
                       seed=seed, noise_scale=scale, facts_sha256=digest, model_fingerprint=fp,
                       seconds=round(time.perf_counter() - t0, 2), per_fact=per_fact)
    if use_cache:
        write_json(path, avg.to_dict())
    return avg


def auto_layers(model, tok, n: int = 1, *, progress: bool = True) -> tuple[list[int], dict]:
    """The ``n`` layers ending at the peak of the average MLP indirect effect at the subject's
    last token, over the first 50 known facts the model answers correctly (cached per model;
    ``llm-edit locate --facts knowns`` fills the same cache). Returns the layers and a record
    for manifests."""
    avg = trace_facts(model, tok, known_facts(), kinds=("mlp",), limit=50, progress=progress)
    layers = avg.layers(n)
    return layers, {"rule": "peak of the average MLP indirect effect at the last subject token, "
                            f"{n} layer(s) ending there", "layers": layers, "facts": avg.n_facts,
                    "facts_sha256": avg.facts_sha256, "samples": avg.samples,
                    "effect_at_peak": avg.effects["mlp"]["last_subject"][layers[-1]]}
