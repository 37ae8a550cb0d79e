"""The TOFU protocol as one call (``llm-edit tofu``): fine-tune, retain model, unlearn, evaluate.

1. fine-tune the base model on the task's ``train`` rows (``recipes/finetune/``);
2. fine-tune the base model on ``retain_train`` only: the retain model, the gold standard;
3. for each method, unlearn ``forget_train`` from a fresh copy of the fine-tuned model, with
   ``retain_train`` as its retain set (``recipes/<method>/tofu-<model>.yaml`` when it exists,
   else the model's recipe). Unless ``holdout_stop`` is off (or ``stop_forget_prob`` is set),
   training stops once the mean forget-answer probability falls to the fine-tuned model's mean
   probability of the *holdout* answers (authors it never saw): the level a model that never
   learned them shows, known without the retain model, so no method is run past forgetting
   into damage, and none is tuned against the gold standard it is scored by;
4. evaluate every model with ``tofu.evaluate_tofu`` and compare each with the retain model.

Fine-tuned and retain models are cached (safetensors, under ``$LLM_EDIT_HOME/cache/tofu``)
keyed by the base model's fingerprint, the rows and the fine-tuning hyper-parameters, so a
second method, or a second run, reuses them; so are evaluations.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time

from .tofu import EvalSettings, TofuTask, attach_reference, evaluate_tofu, items


def _recipe_name(method: str, base: str) -> str | None:
    from ..core.config import recipes_dir
    from ..core.models import ALIASES

    alias = ALIASES.get(base)
    if alias is None:
        return None
    tofu = recipes_dir() / method / f"tofu-{alias.recipe}.yaml"
    return tofu.stem if tofu.is_file() else alias.recipe


def finetune_key(model_fingerprint: str, rows: list[dict], config) -> str:
    """The cached fine-tuned model's key: the base model, the rows, and the hyper-parameters that
    differ from their defaults, so a key added to the shared training config later (at a default
    that keeps today's behaviour) leaves every cached model valid."""
    changed = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
               if getattr(config, f.name) != f.default}
    return hashlib.sha256(json.dumps([model_fingerprint, rows, changed], sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]


def finetuned_model(base: str, rows: list[dict], role: str, *, sets=(), recipe=None, device=None, dtype=None,
                    progress: bool = True, log=print):
    """The base model fine-tuned on ``rows`` (from the cache when it is there); (model, tok, info)."""
    from ..core.config import load_config
    from ..core.files import atomic_directory, write_json
    from ..core.models import ALIASES, cache_home, fingerprint, load_model
    from ..unlearning.finetune import FinetuneConfig, finetune

    alias = ALIASES.get(base)
    config, recipe_path = load_config(FinetuneConfig, "finetune", recipe=recipe,
                                      model_recipe=alias.recipe if alias else None, sets=list(sets))
    model, tok = load_model(base, device=device, dtype=dtype)
    key = finetune_key(fingerprint(model), rows, config)
    folder = cache_home() / "cache" / "tofu" / f"{role}-{key}"
    if (folder / "llm_edit_manifest.json").is_file():
        log(f"{role} model: cached at {folder}")
        del model
        tuned, tok = load_model(str(folder), device=device, dtype=dtype)
        return tuned, tok, json.loads((folder / "llm_edit_manifest.json").read_text())
    t0 = time.perf_counter()
    tuned, train_log, config = finetune(model, tok, items(rows), config, progress=progress,
                                        desc=f"fine-tuning the {role} model")
    info = {"role": role, "base_model": base, "rows": len(rows),
            "rows_sha256": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest(),
            "hyperparameters": dataclasses.asdict(config), "recipe": str(recipe_path),
            "seconds": round(time.perf_counter() - t0, 1), "final": train_log[-1] if train_log else None,
            "log": train_log}
    with atomic_directory(folder, overwrite=True) as tmp:
        tuned.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_json(tmp / "llm_edit_manifest.json", info)
    log(f"{role} model: fine-tuned in {info['seconds']:.0f} s -> {folder}")
    tuned.name_or_path = str(folder)
    return tuned, tok, info


def run_tofu(base: str, task: TofuTask, methods: list[str], *, finetune_sets=(), finetune_recipe=None,
             unlearn_recipe=None, unlearn_sets=(), settings: EvalSettings | None = None, device=None, dtype=None,
             progress: bool = True, log=print, holdout_stop: bool = True) -> dict:
    """Run the protocol; returns {"rows": {name: report}, "runs": {...}} (see ``report.write_tofu``)."""
    from ..unlearning.forget import forget

    settings = settings or EvalSettings()
    reports, runs = {}, {}
    ft, tok, runs["finetuned"] = finetuned_model(base, task.train, "finetuned", sets=finetune_sets,
                                                 recipe=finetune_recipe, device=device, dtype=dtype,
                                                 progress=progress, log=log)
    ft_folder = ft.name_or_path
    reports["finetuned"] = evaluate_tofu(ft, tok, task, settings, progress=progress, name="finetuned")
    del ft
    rt, tok, runs["retain"] = finetuned_model(base, task.retain_train, "retain", sets=finetune_sets,
                                              recipe=finetune_recipe, device=device, dtype=dtype,
                                              progress=progress, log=log)
    reports["retain"] = evaluate_tofu(rt, tok, task, settings, progress=progress, name="retain")
    del rt
    from ..core.models import load_model
    from .tofu_metrics import mean

    overrides = {}
    user_stop = any(x.split("=", 1)[0].strip() == "stop_forget_prob" for x in unlearn_sets)
    if holdout_stop and not user_stop and reports["finetuned"]["items"]["holdout"]:
        overrides["stop_forget_prob"] = mean([r["probability"] for r in reports["finetuned"]["items"]["holdout"]])
        log(f"unlearning stops at the fine-tuned model's holdout probability, {overrides['stop_forget_prob']:.4f}")

    for method in methods:
        model, tok = load_model(ft_folder, device=device, dtype=dtype)
        recipe = unlearn_recipe or _recipe_name(method, base)
        t0 = time.perf_counter()
        result = forget(model, tok, items(task.forget_train), items(task.retain_train), method, recipe=recipe,
                        sets=list(unlearn_sets), progress=progress, **overrides)
        unlearned = result.merge()
        runs[method] = {"recipe": result.manifest.get("recipe"), "hyperparameters": result.manifest["hyperparameters"],
                        "training": result.manifest["training"], "seconds": round(time.perf_counter() - t0, 1),
                        "holdout_stop": overrides.get("stop_forget_prob")}
        log(f"{method}: unlearned in {runs[method]['seconds']:.0f} s ({result.manifest['training']['steps']} steps)")
        reports[method] = evaluate_tofu(unlearned, tok, task, settings, progress=progress, name=method)
        del model, unlearned, result
    for name, report in reports.items():
        attach_reference(report, reports["retain"], "retain model (this run)")
    return {"task": task.describe(), "base_model": base, "methods": methods, "runs": runs, "rows": reports}
