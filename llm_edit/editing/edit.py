"""The Python API: ``edit`` inserts or rewrites facts and returns a revertible result.

    import llm_edit
    model, tok = llm_edit.load_model("llama")
    result = llm_edit.edit(model, tok, [{"prompt": "The {} is located in the city of",
                                         "subject": "Eiffel Tower", "target_new": "Rome"}])
    result.save_patch("eiffel.safetensors")
    result.revert()                      # the weights are bit for bit as before

Editing happens in place. If anything fails part-way (an exception, NaN, Ctrl-C), every edit
already applied in this call is reverted before the error propagates: the model is exactly as
it was.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ..core.config import load_config
from ..core.files import run_info
from ..core.models import fingerprint, model_recipe_name
from ..core.patch import WeightDelta, tensor_sha256
from .contract import Memory, Prepared
from .methods import METHODS, get_method
from .requests import EditRequest, parse_preserved, parse_request


@dataclasses.dataclass
class EditResult:
    model: torch.nn.Module
    delta: WeightDelta  # every batch of this call, stacked
    requests: list[EditRequest]
    per_request: list[dict]
    batches: list[WeightDelta] = dataclasses.field(default_factory=list)  # one per batch, applied in order
    batch_keys: list[dict] = dataclasses.field(default_factory=list)  # per batch: module -> keys (memory methods)
    memory: dict = dataclasses.field(default_factory=dict)  # module -> Σ K Kᵀ after this call (memory methods)
    prepared: Prepared | None = dataclasses.field(default=None, repr=False)  # the method's prepare(), reusable

    @property
    def manifest(self) -> dict:
        return self.delta.manifest

    def revert(self) -> None:
        """Restore the weights as they were before ``edit`` (bit for bit)."""
        self.delta.revert(self.model)

    def save_patch(self, path: str | Path) -> None:
        self.delta.save(path)


def facts_sha256(requests: list[EditRequest]) -> str:
    blob = "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in requests)
    return hashlib.sha256(blob.encode()).hexdigest()


def edit(model, tokenizer, requests: Iterable[EditRequest | Mapping[str, Any]], method: str = "rome", *,
         recipe: str | Path | None = None, sets: list[str] = (), progress: bool = True,
         memory: Mapping[str, torch.Tensor] | None = None, prepared: Prepared | None = None,
         preserve: Iterable[EditRequest | Mapping[str, Any]] | None = None, **hparams) -> EditResult:
    """Apply ``method`` to ``requests`` in place; hyper-parameters come from the model's recipe
    (or ``recipe``), then ``sets`` (``"key=value"`` strings), then ``hparams``, all validated
    against the method's config (a misspelt name raises ``ConfigError``).

    Requests go in batches of the method's ``batch_size``, applied one after another (later
    batches see earlier ones). ``memory`` (AlphaEdit: module → Σ K Kᵀ of earlier edits' keys,
    ``EditResult.memory`` of an earlier call or ``llm_edit.editing.session``) is not modified; the
    updated memory is returned.

    ``prepared`` (``EditResult.prepared`` of an earlier call with the same method and settings)
    skips the method's preparation: in a sequence of edits the key statistics, null-space
    projectors and context prefixes stay the *original* model's. Without it they are measured
    on the model as it is now, and after an edit of layers 2–4 the statistics of layers 3 and 4
    (whose keys depend on layer 2) would be recomputed on the edited model.

    ``preserve``: facts that are not edited and whose keys every update must leave where they are
    (methods with ``preserves``: MEMIT's objective gains ``preserve_weight``·Σ‖ΔW k_p‖², ROME's C
    ``preserve_weight``·K_pᵀK_p); ``forget`` passes an erasure's protected neighbours here. Each
    needs a prompt and subject (``target_new`` is not used). Left at ``None`` with the config's
    ``protect_neighbours`` n > 0, they are the known facts closest to the requests (``preserved_neighbours``)."""
    spec = get_method(method)
    requests = [parse_request(r, f"<requests[{i}]>") for i, r in enumerate(requests)]
    if not requests:
        raise ValueError("no requests to edit")
    preserve_given = preserve is not None
    preserve = [parse_preserved(r, f"<preserve[{i}]>") for i, r in enumerate(preserve or ())]
    if preserve and not spec.preserves:
        raise ValueError(f"{method} cannot preserve given facts (preserve=...): only "
                         f"{', '.join(n for n, m in METHODS.items() if m.preserves)} can")
    if spec.erases:
        missing = [i for i, r in enumerate(requests) if not r.target_true]
        if missing:
            raise ValueError(f"{method} erases each request's target_true (the object to forget); request "
                             f"{missing[0]} has none")
    config, recipe_path = load_config(spec.config, method, recipe=recipe, model_recipe=model_recipe_name(model),
                                      sets=list(sets), overrides=hparams)
    neighbours_of: dict[EditRequest, tuple[int, ...]] = {}
    if getattr(config, "protect_neighbours", 0) and not preserve_given:
        preserve, neighbours_of = preserved_neighbours(requests, config.protect_neighbours)
    torch.manual_seed(getattr(config, "seed", 0))
    base_fingerprint = fingerprint(model)
    t0 = time.perf_counter()
    if prepared is not None:
        if prepared.config != dataclasses.asdict(config):
            raise ValueError("prepared: it was made for other settings than this call's")
    else:
        prepared = spec.prepare(model, tokenizer, config)
        prepared.config = dataclasses.asdict(config)
    prepare_seconds = time.perf_counter() - t0
    grams = Memory({name: m.clone() for name, m in (memory or {}).items()}, preserve=preserve,
                   neighbours_of=neighbours_of)

    applied, batch_keys, per_request = _apply_batches(model, tokenizer, requests, method, spec, config, prepared,
                                                     grams, progress)
    later_rounds = _later_rounds(model, tokenizer, requests, method, spec, config, prepared, grams, progress,
                                 applied, batch_keys)
    manifest = {
        "method": method,
        "hyperparameters": dataclasses.asdict(config),
        "recipe": str(recipe_path),
        "base_model": getattr(model, "name_or_path", None),
        "base_model_fingerprint": base_fingerprint,
        "facts_sha256": facts_sha256(requests),
        "facts": [r.to_dict() for r in requests],
        **({"preserved": [r.to_dict() for r in preserve]} if preserve else {}),
        **({"known_key_subjects": prepared.known_subjects} if prepared.known_subjects else {}),
        "layer": prepared.layer,
        "located": prepared.located,
        "statistics": prepared.statistics,
        "context_templates": prepared.contexts,
        "prepare_seconds": round(prepare_seconds, 2),
        "per_request": per_request,
        **({"later_rounds": later_rounds} if later_rounds else {}),
        **run_info(),
    }
    return EditResult(model, WeightDelta.stack(applied, manifest), requests, per_request, applied,
                      batch_keys if any(batch_keys) else [], grams.grams, prepared)


def preserved_neighbours(requests: list[EditRequest], per_request: int
                         ) -> tuple[list[EditRequest], dict[EditRequest, tuple[int, ...]]]:
    """Up to ``per_request`` shipped known facts per request that share its old object
    (``target_true``) or its relation, from the training half (``core.known``; the evaluations'
    neighbours come from the other half): what an edit of the request damages first ("the
    Louvre ... Paris" when the Eiffel Tower moves to Rome), kept where they are. Returns them
    and, per request, the indices of its own: an edit keeps its request's neighbours, not the
    whole file's (a thousand keys held still would leave a rank-one edit little room)."""
    from ..core.known import Anchor, closest_known

    anchors = [Anchor(r.text, r.subject, r.target_true, r.relation_id) for r in requests]
    chosen = closest_known(anchors, per_request, "train")
    owners: dict[EditRequest, tuple[int, ...]] = {}
    for i, c in enumerate(chosen):
        owners[requests[c.anchor]] = owners.get(requests[c.anchor], ()) + (i,)
    return [EditRequest(c.fact["prompt"].replace(c.fact["subject"], "{}", 1), c.fact["subject"], "",
                        c.fact["attribute"], relation_id=c.fact.get("relation_id")) for c in chosen], owners


def _apply_batches(model, tokenizer, requests: list[EditRequest], method: str, spec, config, prepared: Prepared,
                   grams: Memory, progress: bool) -> tuple[list[WeightDelta], list[dict], list[dict]]:
    """Compute and apply one batch after another (later batches see earlier ones); returns the
    applied deltas, each batch's keys and each request's info. A failure part-way reverts every
    batch applied so far, so the model is left as it was."""
    from tqdm.auto import tqdm

    applied: list[WeightDelta] = []
    batch_keys: list[dict] = []
    per_request: list[dict] = []
    size = spec.batch_size(config)
    try:
        with tqdm(total=len(requests), desc=f"{method} edits", unit="fact", disable=not progress) as bar:
            for start in range(0, len(requests), size):
                batch = requests[start:start + size]
                t = time.perf_counter()
                factors, infos = spec.compute(model, tokenizer, batch, config, prepared, grams)
                if len(infos) != len(batch):
                    raise RuntimeError(f"{method}.compute returned {len(infos)} infos for {len(batch)} requests")
                base = {name: tensor_sha256(model.get_parameter(name)) for name in factors}
                delta = WeightDelta(factors, {"method": method, "hyperparameters": dataclasses.asdict(config),
                                             "requests": [r.to_dict() for r in batch]}, base)
                delta.apply(model)  # raises on non-finite weights, leaving this batch unapplied
                applied.append(delta)
                keys, grams.staged = grams.staged, {}
                for name, k in keys.items():  # the batch is in: later batches must preserve its keys
                    grams.grams[name] = add_gram(grams.grams.get(name), k)
                batch_keys.append(keys)
                seconds = time.perf_counter() - t
                per_request += [dict(x, seconds=round(seconds / len(batch), 3)) for x in infos]
                bar.update(len(batch))
    except BaseException:
        for delta in reversed(applied):
            delta.revert(model)
        raise
    return applied, batch_keys, per_request


def _later_rounds(model, tokenizer, requests: list[EditRequest], method: str, spec, config, prepared: Prepared,
                  grams: Memory, progress: bool, applied: list[WeightDelta], batch_keys: list[dict]) -> list[dict]:
    """The rounds after the first (``erase_rounds`` of an erasure, ``insert_rounds`` of an insertion):
    the requests whose change does not yet hold in a training form (``erase.unheld``) are edited
    again, in batches as before, on the model as now edited; each round asks only those the round
    before edited. Their patches join ``applied`` (and ``batch_keys``); a failure reverts every round,
    the first included, so the model is left as it was. Returns, per later round, the requests
    edited again (indices) and their info."""
    from .methods import erase

    rounds: list[dict] = []
    pending = list(range(len(requests)))
    n_rounds = getattr(config, "erase_rounds" if spec.erases else "insert_rounds", 1)
    try:
        for round_number in range(2, n_rounds + 1):
            pending = [pending[i] for i in erase.unheld(model, tokenizer, [requests[j] for j in pending], config)]
            if not pending:
                break
            more, keys, info = _apply_batches(model, tokenizer, [requests[j] for j in pending], method, spec, config,
                                              prepared, grams, progress)
            applied += more
            batch_keys += keys
            rounds.append({"round": round_number, "requests": pending, "per_request": info})
    except BaseException:
        for delta in reversed(applied):
            delta.revert(model)
        raise
    return rounds


def add_gram(gram: torch.Tensor | None, keys: torch.Tensor) -> torch.Tensor:
    """gram + KᵀK for keys (n, d) in float64 on the CPU: the AlphaEdit memory K_p K_pᵀ grows by
    each batch's keys (Fang et al. 2025, eq. 12), in the order the batches were applied, so that
    recomputing it from stored keys gives the same bits."""
    k = keys.detach().double().cpu()
    update = k.T @ k
    return update if gram is None else gram + update


# -- unlearning -----------------------------------------------------------------------------------
