"""The Python API of unlearning: ``forget`` trains a model to lose facts, questions or text (or
erases facts by rank-one edits) and returns a ``ForgetResult`` to merge, unload or save.

    import llm_edit
    model, tok = llm_edit.load_model("llama")
    result = llm_edit.forget(model, tok, [{"prompt": "The {} is located in the city of",
                                           "subject": "Eiffel Tower", "target": "Paris"}])
    result.save("forgotten/")            # or result.unload(): the model exactly as before
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from ..core.config import ConfigError, load_config, parse_set
from ..core.files import run_info
from ..core.models import fingerprint, model_recipe_name
from ..core.patch import WeightDelta
from ..editing.edit import edit
from ..editing.requests import EditRequest


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
        from ..core.files import atomic_directory, write_json

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


# ``forget``'s method when none is given, by what the items are (README, "Forgetting that holds",
# shows the table that chose it): facts are erased by rank-one edits over every form they are
# asked in; questions and text have no subject to edit at, so a training-based unlearner.
DEFAULT_METHOD = {"fact": "memit-erase", "qa": "npo", "text": "npo"}


# Question items carry long answers (TOFU's shape) that a facts recipe, tuned to one-word objects,
# does not forget in its steps: a model whose recipe folder has ``questions-<its recipe>.yaml`` for
# the method uses it for them (README, "The question-file default").
QUESTION_RECIPE = "questions-{}"


def all_questions(items) -> bool:
    return {x.kind for x in items} == {"qa"}


def items_recipe(method: str, model_recipe: str | None, items) -> str | None:
    """The recipe name ``forget`` uses for ``items`` on a model whose recipe is ``model_recipe``:
    its question recipe when every item is a question and the method has one, else its own."""
    from ..core.config import recipes_dir

    if model_recipe is None or not all_questions(items):
        return model_recipe
    name = QUESTION_RECIPE.format(model_recipe)
    return name if (recipes_dir() / method / f"{name}.yaml").is_file() else model_recipe


def default_method(items) -> str:
    """``DEFAULT_METHOD`` of the items' shape ("npo" when the shapes are mixed)."""
    kinds = {x.kind for x in items}
    return DEFAULT_METHOD[kinds.pop()] if len(kinds) == 1 else "npo"


def _parse_items(items, name: str):
    from .items import parse_item, read_items

    if isinstance(items, (str, Path)):
        return read_items(items)
    parsed = [parse_item(x, f"<{name}[{i}]>") for i, x in enumerate(items)]
    if not parsed:
        raise ValueError(f"no {name} items")
    return parsed


def default_retain(model, tok, config) -> tuple[list, str]:
    """Without a retain set: generic text sampled from the original model (cached, seeded), so
    the retain term keeps the model's general behaviour rather than any one domain."""
    from ..editing.stats import model_samples
    from .items import ForgetItem

    seq_len = 128  # the statistics cache's sample length, so cached samples are reused
    rows = list(model_samples(model, tok, config.retain_samples * seq_len, seq_len, config.seed,
                              desc="sampling retain text from the model"))
    texts = [tok.decode(r[: config.retain_sample_tokens], skip_special_tokens=True) for r in rows]
    items = [ForgetItem("text", "", t) for t in texts[: config.retain_samples] if t.strip()]
    return items, (f"model-samples: {len(items)} texts of {config.retain_sample_tokens} tokens sampled "
                   f"from the original model (seed {config.seed})")


def _retain_set(model, tokenizer, spec, config, retain, forget_items) -> tuple[list | None, str, list]:
    """(retain items, where they came from, the protective known facts among them)."""
    from .expand import protective_retain

    if not spec.needs_retain:
        return None, "none (the method has no retain term)", []
    if retain is not None:
        given = _parse_items(retain, "retain")
        source = str(retain) if isinstance(retain, (str, Path)) else "given"
        if not config.retain_generic:
            return given, source, []
        generic, generic_source = default_retain(model, tokenizer, config)
        return given + generic, f"{source}; {generic_source}", []
    retain_items, source = default_retain(model, tokenizer, config)
    protective = protective_retain(forget_items, config.protect_neighbours)
    if protective:
        retain_items = protective + retain_items
        source += f"; {len(protective)} known facts sharing the forgotten facts' object or relation"
    return retain_items, source, protective


def forget(model, tokenizer, forget: Iterable | str | Path, retain: Iterable | str | Path | None = None,
           method: str | None = None, *, recipe: str | Path | None = None, sets: list[str] = (), progress: bool = True,
           callback=None, checkpoint_dir: str | Path | None = None, accelerator=None,
           holdout: Iterable | str | Path | None = None, **hparams) -> ForgetResult:
    """Unlearn ``forget`` (items, dicts or a file path) with ``method`` (default:
    ``default_method`` of the items: memit-erase for facts, npo otherwise); hyper-parameters come
    from the model's recipe (its question recipe for question items, ``items_recipe``; or
    ``recipe``), then ``sets``, then ``hparams``, all validated
    against the method's config. The model is trained in place through a LoRA adapter; if
    training fails the adapter is removed and the model is exactly as before.

    ``callback(step, record, model)`` runs after every optimizer step; returning True stops.

    ``holdout``: items of the same kind that the model never saw (TOFU's holdout authors, say).
    Training stops once the forget answers are no more probable than the original model finds
    these (``holdout_stop``), with at most the recipe's ``stop_steps``.

    An erasure method (``rome-erase``) edits the weights instead of training: facts only,
    ``retain`` unused, the result holds the patch (``ForgetResult.delta``)."""
    from ..editing.methods import ERASERS
    from .expand import expand_items
    from .items import Formatting, items_sha256
    from .methods import get_unlearner
    from .trainer import Trainer

    forget_items = _parse_items(forget, "forget")
    holdout_items = _parse_items(holdout, "holdout") if holdout is not None else None
    method = method or default_method(forget_items)
    if method in ERASERS:
        if holdout_items:
            raise ConfigError(f"holdout: {method} edits weights once and has no stop; a holdout serves the unlearners")
        return _erase(model, tokenizer, forget_items, method, recipe=recipe, sets=sets, progress=progress,
                      **hparams)
    spec = get_unlearner(method)
    config, recipe_path = load_config(spec.config, method, recipe=recipe,
                                      model_recipe=items_recipe(method, model_recipe_name(model), forget_items),
                                      sets=list(sets), overrides=hparams)
    base_fingerprint = fingerprint(model)
    located = None
    if spec.resolve is not None:  # before any adapter: e.g. RMU's layer: auto traces the original model
        config, located = spec.resolve(model, tokenizer, config, progress)
    retain_items, retain_source, protective = _retain_set(model, tokenizer, spec, config, retain, forget_items)
    fmt = Formatting(config.use_chat_template, config.system_prompt)
    holdout_info = None
    user_keys = set(hparams) | set(parse_set(list(sets)))
    if holdout_items:
        if "stop_forget_prob" in user_keys:
            raise ConfigError("holdout: the holdout sets stop_forget_prob; do not set it as well")
        level = holdout_stop(model, tokenizer, holdout_items, fmt, config.max_length)
        config = dataclasses.replace(config, stop_forget_prob=round(level, 6))
        holdout_info = {"items": len(holdout_items), "sha256": items_sha256(holdout_items),
                        "source": str(holdout) if isinstance(holdout, (str, Path)) else "given",
                        "stop_forget_prob": config.stop_forget_prob}
    if config.stop_forget_prob is not None and config.stop_steps is not None and "steps" not in user_keys:
        config = dataclasses.replace(config, steps=config.stop_steps)  # steps the user gives are kept
    trained = expand_items(model, tokenizer, forget_items, config.expand,
                           chat=fmt.use_chat_template and bool(getattr(tokenizer, "chat_template", None)))
    t0 = time.perf_counter()
    trainer = Trainer(model, tokenizer, trained, retain_items, spec, config, accelerator=accelerator,
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
        # what was trained besides the items given (expand, protect_neighbours), every text
        "derived_forms": [x.to_dict() for x in trained[len(forget_items):]],
        "protective_retain": [x.to_dict() for x in protective],
        "retain_sha256": items_sha256(retain_items) if retain_items else None,
        "retain_items": len(retain_items) if retain_items else 0,
        "retain_source": retain_source,
        "holdout": holdout_info,
        "formatting": fmt.describe(tokenizer),
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


def holdout_stop(model, tokenizer, holdout_items, fmt, max_length: int) -> float:
    """The original model's mean answer probability on items it never saw, formatted as training
    formats the forget items: the level a model that never learned the forget answers would give
    them. ``llm-edit tofu`` stops at TOFU's holdout authors' level (a choice of this project's
    protocol, ``evaluating.tofu_protocol``, not of the TOFU paper)."""
    from ..core.text import pad_id
    from .items import encode
    from .trainer import mean_answer_probability

    device = next(model.parameters()).device
    return mean_answer_probability(model, holdout_items, lambda x: encode(tokenizer, x, fmt, max_length),
                              pad_id(tokenizer), device)


def erase_requests(items) -> list[EditRequest]:
    """Forget items (facts) as edit requests whose ``target_true`` is the object to erase."""
    requests = []
    for i, item in enumerate(items):
        subject = item.extra.get("subject") if item.kind == "fact" else None
        if subject is None:
            raise ValueError(f"forget item {i} is a {item.kind!r} item: erasure by edits needs facts "
                             "(prompt, subject, target); use a training-based unlearner for questions or text")
        requests.append(EditRequest(item.prompt.replace(subject, "{}", 1), subject, "", item.answer,
                                    tuple(item.paraphrases), relation_id=item.extra.get("relation_id")))
    return requests


def _erase(model, tokenizer, items, method: str, *, recipe=None, sets=(), progress=True, **hparams) -> ForgetResult:
    """Erase facts by edits; with ``protect_neighbours`` the known facts closest to them (the
    training half, ``expand.protective_retain``) are passed to the edit as facts to preserve."""
    from ..editing.methods import get_method
    from .expand import protective_retain
    from .items import items_sha256

    config, _ = load_config(get_method(method).config, method, recipe=recipe, model_recipe=model_recipe_name(model),
                            sets=list(sets), overrides=hparams)
    # an eraser without preserved keys refuses protect_neighbours in its config's validate
    protective = protective_retain(items, config.protect_neighbours)
    t0 = time.perf_counter()
    result = edit(model, tokenizer, erase_requests(items), method, recipe=recipe, sets=sets, progress=progress,
                  preserve=erase_requests(protective), **hparams)
    manifest = dict(result.manifest, forget_sha256=items_sha256(items), forget_items=len(items),
                    protective_retain=[x.to_dict() for x in protective],
                    retain_source=(f"none; {len(protective)} known facts sharing the forgotten facts' object or "
                                   "relation kept by the solve (preserved keys)" if protective
                                   else "none (erasure by edits has no retain term)"),
                    training={"adapter": None, "steps": len(items), "stopped_early": False, "processes": 1,
                              "effective_batch_size": 1, "seconds": round(time.perf_counter() - t0, 2)})
    return ForgetResult(model, tokenizer, manifest, result.per_request, delta=result.delta)
