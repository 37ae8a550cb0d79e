"""``llm-edit tofu``."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import add_model_args, check_out, eval_settings, tofu_task

HELP = "the TOFU protocol: fine-tune, retain model, unlearn, evaluate, one table"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..unlearning.methods import UNLEARNERS

    add_model_args(p)
    p.add_argument("--split", default="forget10", help="forget01, forget05 or forget10")
    p.add_argument("--method", default="npo", help="unlearning method(s), comma-separated: "
                   + ", ".join(sorted(UNLEARNERS)))
    p.add_argument("--authors", type=int, help="CPU-sized TOFU: the first N authors (2-20); default: all 200")
    p.add_argument("--forget-authors", type=int, help="CPU-sized TOFU: forget the last K of the N authors "
                                                       "(default: N x the split's percentage, at least 1)")
    p.add_argument("--forget-block", type=int, default=0, help="CPU-sized TOFU: forget the B-th block of K authors "
                                                                "counted from the last (0: the last K)")
    p.add_argument("--eval-limit", type=int, help="at most this many retain / real-author / world-fact rows")
    p.add_argument("--tofu-data", help="folder of TOFU's JSON files (default: $LLM_EDIT_TOFU_DATA, else the hub)")
    p.add_argument("--finetune-recipe", help="fine-tuning recipe file or name (default: recipes/finetune/<model>)")
    p.add_argument("--finetune-set", dest="finetune_sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--recipe", help="unlearning recipe (default: recipes/<method>/tofu-<model>.yaml if present)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one unlearning hyper-parameter (repeatable)")
    p.add_argument("--no-holdout-stop", action="store_true",
                   help="run every unlearning step (default: stop at the fine-tuned model's holdout probability)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--generation-batch-size", type=int, default=32)
    p.add_argument("--out", required=True, help="output directory: report.json, report.md, PNG plots")
    p.add_argument("--overwrite", action="store_true")


def run(args) -> int:
    from ..core.config import ConfigError, load_config
    from ..core.files import atomic_directory
    from ..core.models import ALIASES
    from ..evaluating.report import tofu_summary, write_tofu
    from ..evaluating.tofu_protocol import _recipe_name, run_tofu
    from ..unlearning.finetune import FinetuneConfig
    from ..unlearning.methods import get_unlearner

    check_out(args)
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    alias = ALIASES.get(args.model)
    try:  # every recipe and --set is checked before hours of work
        load_config(FinetuneConfig, "finetune", recipe=args.finetune_recipe,
                    model_recipe=alias.recipe if alias else None, sets=args.finetune_sets)
        for m in methods:
            spec = get_unlearner(m)
            load_config(spec.config, m, recipe=args.recipe or _recipe_name(m, args.model),
                        model_recipe=alias.recipe if alias else None, sets=args.sets)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    task = tofu_task(args)
    t0 = time.perf_counter()
    result = run_tofu(args.model, task, methods, finetune_sets=args.finetune_sets,
                      finetune_recipe=args.finetune_recipe, unlearn_recipe=args.recipe, unlearn_sets=args.sets,
                      settings=eval_settings(args), device=args.device, dtype=args.dtype,
                      holdout_stop=not args.no_holdout_stop)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    rows = result["rows"]
    with atomic_directory(Path(args.out), overwrite=args.overwrite) as out:
        write_tofu(out, result, rows, f"TOFU ({args.split}) on {args.model}", reference=rows["retain"],
                   notes=[f"whole protocol: {result['seconds']:.0f} s"]
                   + [f"{name}: {info.get('seconds')} s" for name, info in result["runs"].items()])
    print(tofu_summary(rows, f"TOFU ({args.split}) on {args.model}"))
    print(f"whole protocol in {result['seconds']:.0f} s; report: {Path(args.out) / 'report.md'}")
    return 0
