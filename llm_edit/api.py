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
    delta: WeightDelta  # every batch of this call, stacked
    requests: list[EditRequest]
    per_request: list[dict]
    batches: list[WeightDelta] = dataclasses.field(default_factory=list)  # one per batch, applied in order
    batch_keys: list[dict] = dataclasses.field(default_factory=list)  # per batch: module -> keys (memory methods)
    memory: dict = dataclasses.field(default_factory=dict)  # module -> Σ K Kᵀ after this call (memory methods)
    prepared: dict = dataclasses.field(default_factory=dict, repr=False)  # the method's prepare() state, reusable

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
         memory: Mapping[str, torch.Tensor] | None = None, prepared: dict | None = None,
         **hparams) -> EditResult:
    """Apply ``method`` to ``requests`` in place; hyper-parameters come from the model's recipe
    (or ``recipe``), then ``sets`` (``"key=value"`` strings), then ``hparams``, all validated
    against the method's config (a misspelt name raises ``ConfigError``).

    Requests go in batches of the method's ``batch_size``, applied one after another (later
    batches see earlier ones). ``memory`` (AlphaEdit: module → Σ K Kᵀ of earlier edits' keys,
    ``EditResult.memory`` of an earlier call or ``llm_edit.session``) is not modified; the
    updated memory is returned.

    ``prepared`` (``EditResult.prepared`` of an earlier call with the same method and settings)
    skips the method's preparation: in a sequence of edits the key statistics, null-space
    projectors and context prefixes stay the *original* model's. Without it they are measured
    on the model as it is now, and after an edit of layers 2–4 the statistics of layers 3 and 4
    (whose keys depend on layer 2) would be recomputed on the edited model."""
    spec = get_method(method)
    requests = [parse_request(r, f"<requests[{i}]>") for i, r in enumerate(requests)]
    if not requests:
        raise ValueError("no requests to edit")
    if spec.erases:
        missing = [i for i, r in enumerate(requests) if not r.target_true]
        if missing:
            raise ValueError(f"{method} erases each request's target_true (the object to forget); request "
                             f"{missing[0]} has none")
    config, recipe_path = load_config(spec.config, method, recipe=recipe, model_recipe=model_recipe_name(model),
                                      sets=list(sets), overrides=hparams)
    torch.manual_seed(getattr(config, "seed", 0))
    base_fingerprint = fingerprint(model)
    t0 = time.perf_counter()
    if prepared is not None:
        if prepared.get("_config") != dataclasses.asdict(config):
            raise ValueError("prepared: it was made for other settings than this call's")
        state = dict(prepared)
    else:
        state = spec.prepare(model, tokenizer, config)
        state["_config"] = dataclasses.asdict(config)
    prepare_seconds = time.perf_counter() - t0
    state["memory"] = {name: m.clone() for name, m in (memory or {}).items()}

    applied: list[WeightDelta] = []
    batch_keys: list[dict] = []
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
                delta = WeightDelta(factors, {"method": method, "hyperparameters": dataclasses.asdict(config),
                                             "requests": [r.to_dict() for r in batch]}, base)
                delta.apply(model)  # raises on non-finite weights, leaving this batch unapplied
                applied.append(delta)
                keys = state.pop("memory_keys", {})
                for name, k in keys.items():  # the batch is in: later batches must preserve its keys
                    state["memory"][name] = add_gram(state["memory"].get(name), k)
                batch_keys.append(keys)
                seconds = time.perf_counter() - t
                infos = info if isinstance(info, list) else [info] * len(batch)  # per request, or shared
                per_request += [dict(x, seconds=round(seconds / len(batch), 3)) for x in infos]
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
        "layer": state.get("layer"),
        "located": state.get("located"),
        "statistics": state.get("stats"),
        "context_templates": state.get("contexts"),
        "prepare_seconds": round(prepare_seconds, 2),
        "per_request": per_request,
        **run_info(),
    }
    return EditResult(model, WeightDelta.stack(applied, manifest), requests, per_request, applied,
                      batch_keys if any(batch_keys) else [], state["memory"],
                      {k: v for k, v in state.items() if k != "memory"})


def add_gram(gram: torch.Tensor | None, keys: torch.Tensor) -> torch.Tensor:
    """gram + KᵀK for keys (n, d) in float64 on the CPU: the AlphaEdit memory K_p K_pᵀ grows by
    each batch's keys (Fang et al. 2025, eq. 12), in the order the batches were applied, so that
    recomputing it from stored keys gives the same bits."""
    k = keys.detach().double().cpu()
    update = k.T @ k
    return update if gram is None else gram + update


# -- unlearning -----------------------------------------------------------------------------------

@dataclasses.dataclass
class ForgetResult:
    """The outcome of ``forget``: the trained model (LoRA adapter attached, not yet merged),
    the training log and the manifest. ``merge()`` folds the adapter into the weights;
    ``unload()`` removes it and gives back the original model unchanged; ``save(path)`` writes
    a Hugging Face model directory with the adapter merged, the adapter in ``adapter/`` and
    ``llm_edit_manifest.json``.

    Erasure by edits (``rome-erase``) has no adapter: the weights are edited in place,
    ``delta`` is the patch (``unload()`` reverts it bit for bit) and ``save`` also writes
    ``patch.safetensors``."""

    model: torch.nn.Module
    tokenizer: Any
    manifest: dict
    log: list[dict]
    _trainer: Any = dataclasses.field(repr=False, default=None)
    merged: bool = False
    delta: WeightDelta | None = None

    @property
    def adapter(self):
        """The peft model (None after ``merge``/``unload``, with full fine-tuning or erasure)."""
        return None if self.merged or self._trainer is None else self._trainer.peft_model

    def merge(self) -> torch.nn.Module:
        if self.delta is not None:  # edits are already in the weights
            return self.model
        if not self.merged:
            if self._trainer.peft_model is not None:
                self.model = self._trainer.peft_model.merge_and_unload()
            else:
                self.model = self._trainer.base_model
            self.merged = True
        return self.model

    def unload(self) -> torch.nn.Module:
        """Remove the adapter without merging: the model exactly as before ``forget``."""
        if self.merged:
            raise RuntimeError("the adapter is already merged into the weights")
        if self.delta is not None:
            self.delta.revert(self.model)
            self.merged = True
            return self.model
        self.model = self._trainer.restore()
        self.merged = True
        return self.model

    def save(self, path: str | Path, *, overwrite: bool = False, extra_json: dict[str, Any] | None = None) -> None:
        """Write the directory atomically; ``extra_json`` (file name -> object) goes inside it
        before it is renamed into place, so an interrupt never leaves it without them."""
        from .io import atomic_directory, write_json

        adapter = self.adapter
        with atomic_directory(Path(path), overwrite=overwrite) as out:
            if adapter is not None:
                # the embeddings are never adapted; "auto" would look the base model up on the hub
                adapter.save_pretrained(out / "adapter", safe_serialization=True, save_embedding_layers=False)
            model = self.merge()
            if self.delta is not None:
                self.delta.save(out / "patch.safetensors")
            model.save_pretrained(out, safe_serialization=True)
            self.tokenizer.save_pretrained(out)
            write_json(out / "llm_edit_manifest.json", dict(self.manifest, merged_model_fingerprint=fingerprint(model)))
            for name, obj in (extra_json or {}).items():
                write_json(out / name, obj)


def _parse_items(items, name: str):
    from .forget_data import parse_item, read_items

    if isinstance(items, (str, Path)):
        return read_items(items)
    parsed = [parse_item(x, f"<{name}[{i}]>") for i, x in enumerate(items)]
    if not parsed:
        raise ValueError(f"no {name} items")
    return parsed


def default_retain(model, tok, config) -> tuple[list, str]:
    """Without a retain set: generic text sampled from the original model (cached, seeded), so
    the retain term keeps the model's general behaviour rather than any one domain."""
    from .forget_data import ForgetItem
    from .stats import model_samples

    seq_len = 128  # the statistics cache's sample length, so cached samples are reused
    rows = list(model_samples(model, tok, config.retain_samples * seq_len, seq_len, config.seed,
                              desc="sampling retain text from the model"))
    texts = [tok.decode(r[: config.retain_sample_tokens], skip_special_tokens=True) for r in rows]
    items = [ForgetItem("text", "", t) for t in texts[: config.retain_samples] if t.strip()]
    return items, (f"model-samples: {len(items)} texts of {config.retain_sample_tokens} tokens sampled "
                   f"from the original model (seed {config.seed})")


def forget(model, tokenizer, forget: Iterable | str | Path, retain: Iterable | str | Path | None = None,
           method: str = "npo", *, recipe: str | Path | None = None, sets: list[str] = (), progress: bool = True,
           callback=None, checkpoint_dir: str | Path | None = None, accelerator=None, **hparams) -> ForgetResult:
    """Unlearn ``forget`` (items, dicts or a file path) with ``method``; hyper-parameters come
    from the model's recipe (or ``recipe``), then ``sets``, then ``hparams``, all validated
    against the method's config. The model is trained in place through a LoRA adapter; if
    training fails the adapter is removed and the model is exactly as before.

    ``callback(step, record, model)`` runs after every optimizer step; returning True stops.

    An erasure method (``rome-erase``) edits the weights instead of training: facts only,
    ``retain`` unused, the result holds the patch (``ForgetResult.delta``)."""
    from .forget_data import Formatting, items_sha256
    from .methods import ERASERS
    from .train import Trainer
    from .unlearners import get_unlearner

    forget_items = _parse_items(forget, "forget")
    if method in ERASERS:
        return _erase(model, tokenizer, forget_items, method, recipe=recipe, sets=sets, progress=progress,
                      **hparams)
    spec = get_unlearner(method)
    config, recipe_path = load_config(spec.config, method, recipe=recipe, model_recipe=model_recipe_name(model),
                                      sets=list(sets), overrides=hparams)
    base_fingerprint = fingerprint(model)
    located = None
    if getattr(config, "layer", None) == "auto":  # before any adapter: tracing reads the original model
        from .locate import auto_layers

        (layer,), located = auto_layers(model, tokenizer, 1, progress=progress)
        config = dataclasses.replace(config, layer=layer)
        located = dict(located, requested="auto")
    retain_source = "none (the method has no retain term)"
    retain_items = None
    if spec.needs_retain:
        if retain is None:
            retain_items, retain_source = default_retain(model, tokenizer, config)
        else:
            retain_items = _parse_items(retain, "retain")
            retain_source = str(retain) if isinstance(retain, (str, Path)) else "given"
    t0 = time.perf_counter()
    trainer = Trainer(model, tokenizer, forget_items, retain_items, spec, config, accelerator=accelerator,
                      progress=progress, callback=callback, checkpoint_dir=checkpoint_dir)
    try:
        log = trainer.train()
    except BaseException:
        trainer.restore()
        raise
    seconds = time.perf_counter() - t0
    acc = trainer.accelerator
    manifest = {
        "method": method,
        "hyperparameters": dataclasses.asdict(config),
        "recipe": str(recipe_path),
        "located": located,
        "base_model": getattr(model, "name_or_path", None),
        "base_model_fingerprint": base_fingerprint,
        "forget_sha256": items_sha256(forget_items),
        "forget_items": len(forget_items),
        "retain_sha256": items_sha256(retain_items) if retain_items else None,
        "retain_items": len(retain_items) if retain_items else 0,
        "retain_source": retain_source,
        "formatting": Formatting(config.use_chat_template, config.system_prompt).describe(tokenizer),
        "training": {"adapter": None if config.full_finetune else "lora (all linear layers)",
                     "processes": acc.num_processes, "distributed_type": str(acc.distributed_type),
                     "effective_batch_size": trainer.effective_batch_size(),
                     "steps": len(log), "stopped_early": trainer.stopped_early, "seconds": round(seconds, 2),
                     "salient_weights": trainer.salient,
                     "final": log[-1] if log else None},
        "log": log,
        **run_info(),
    }
    return ForgetResult(acc.unwrap_model(trainer.model) if config.full_finetune else trainer.peft_model, tokenizer, manifest, log,
                        trainer)


def erase_requests(items) -> list[EditRequest]:
    """Forget items (facts) as edit requests whose ``target_true`` is the object to erase."""
    requests = []
    for i, item in enumerate(items):
        subject = item.extra.get("subject") if item.kind == "fact" else None
        if subject is None:
            raise ValueError(f"forget item {i} is a {item.kind!r} item: erasure by edits needs facts "
                             "(prompt, subject, target); use a training-based unlearner for questions or text")
        requests.append(EditRequest(item.prompt.replace(subject, "{}", 1), subject, "", item.answer,
                                    tuple(item.paraphrases)))
    return requests


def _erase(model, tokenizer, items, method: str, **kwargs) -> ForgetResult:
    from .forget_data import items_sha256

    t0 = time.perf_counter()
    result = edit(model, tokenizer, erase_requests(items), method, **kwargs)
    manifest = dict(result.manifest, forget_sha256=items_sha256(items), forget_items=len(items),
                    retain_source="none (erasure by edits has no retain term)",
                    training={"adapter": None, "steps": len(items), "stopped_early": False, "processes": 1,
                              "effective_batch_size": 1, "seconds": round(time.perf_counter() - t0, 2)})
    return ForgetResult(model, tokenizer, manifest, result.per_request, delta=result.delta)
