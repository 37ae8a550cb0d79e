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

from .config import load_config
from .facts import EditRequest, parse_request
from .io import run_info
from .methods import get_method
from .models import ALIASES, fingerprint
from .patch import WeightDelta, tensor_sha256


@dataclasses.dataclass
class EditResult:
    model: torch.nn.Module
    delta: WeightDelta
    requests: list[EditRequest]
    per_request: list[dict]

    @property
    def manifest(self) -> dict:
        return self.delta.manifest

    def revert(self) -> None:
        """Restore the weights as they were before ``edit`` (bit for bit)."""
        self.delta.revert(self.model)

    def save_patch(self, path: str | Path) -> None:
        self.delta.save(path)


def model_recipe_name(model) -> str | None:
    alias = ALIASES.get(getattr(model, "name_or_path", None) or "")
    return alias.recipe if alias else None


def facts_sha256(requests: list[EditRequest]) -> str:
    blob = "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in requests)
    return hashlib.sha256(blob.encode()).hexdigest()


def edit(model, tokenizer, requests: Iterable[EditRequest | Mapping[str, Any]], method: str = "rome", *,
         recipe: str | Path | None = None, sets: list[str] = (), progress: bool = True,
         **hparams) -> EditResult:
    """Apply ``method`` to ``requests`` in place; hyper-parameters come from the model's recipe
    (or ``recipe``), then ``sets`` (``"key=value"`` strings), then ``hparams``, all validated
    against the method's config (a misspelt name raises ``ConfigError``)."""
    spec = get_method(method)
    requests = [parse_request(r, f"<requests[{i}]>") for i, r in enumerate(requests)]
    if not requests:
        raise ValueError("no requests to edit")
    config, recipe_path = load_config(spec.config, method, recipe=recipe, model_recipe=model_recipe_name(model),
                                      sets=list(sets), overrides=hparams)
    torch.manual_seed(getattr(config, "seed", 0))
    base_fingerprint = fingerprint(model)
    t0 = time.perf_counter()
    state = spec.prepare(model, tokenizer, config)
    prepare_seconds = time.perf_counter() - t0

    applied: list[WeightDelta] = []
    per_request: list[dict] = []
    size = spec.batch_size(config)
    from tqdm.auto import tqdm

    try:
        with tqdm(total=len(requests), desc=f"{method} edits", unit="fact", disable=not progress) as bar:
            for start in range(0, len(requests), size):
                batch = requests[start:start + size]
                t = time.perf_counter()
                factors, info = spec.compute(model, tokenizer, batch, config, state)
                base = {name: tensor_sha256(model.get_parameter(name)) for name in factors}
                delta = WeightDelta(factors, {"requests": [r.to_dict() for r in batch]}, base)
                delta.apply(model)  # raises on non-finite weights, leaving this batch unapplied
                applied.append(delta)
                seconds = time.perf_counter() - t
                per_request += [dict(info, seconds=round(seconds / len(batch), 3)) for _ in batch]
                bar.update(len(batch))
    except BaseException:
        for delta in reversed(applied):
            delta.revert(model)
        raise

    manifest = {
        "method": method,
        "hyperparameters": dataclasses.asdict(config),
        "recipe": str(recipe_path),
        "base_model": getattr(model, "name_or_path", None),
        "base_model_fingerprint": base_fingerprint,
        "facts_sha256": facts_sha256(requests),
        "facts": [r.to_dict() for r in requests],
        "statistics": state.get("stats"),
        "context_templates": state.get("contexts"),
        "prepare_seconds": round(prepare_seconds, 2),
        "per_request": per_request,
        **run_info(),
    }
    return EditResult(model, WeightDelta.stack(applied, manifest), requests, per_request)
