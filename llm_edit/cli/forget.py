"""``llm-edit forget``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import add_model_args, check_items_fit, check_out, layers_to_sets

HELP = "unlearn facts, questions or text (LoRA, through accelerate)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..editing.methods import ERASERS
    from ..unlearning.methods import UNLEARNERS

    add_model_args(p)
    p.add_argument("--facts", required=True, help="JSONL/JSON of items to forget: facts, question/answer pairs or text")
    p.add_argument("--retain", help="items to keep (default: text sampled from the model itself)")
    p.add_argument("--holdout", help="items of the same kind the model never saw: training stops once the forget "
                   "answers are no more probable than these (llm-edit tofu's stop; at most the recipe's stop_steps)")
    p.add_argument("--method", choices=sorted(UNLEARNERS) + sorted(ERASERS),
                   help="a training-based unlearner, or an erasure by rank-one edits (" + ", ".join(ERASERS) + "); "
                   "default: memit-erase for facts, npo for questions and text (README, 'Forgetting that holds')")
    p.add_argument("--layers", help="'auto': take the edited/steered layer(s) from causal tracing (rome-erase, memit-erase, alphaedit-erase, rmu)")
    p.add_argument("--recipe", help="YAML hyper-parameter file or recipe name (default: the model's)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one hyper-parameter (repeatable); values are YAML")
    p.add_argument("--out", required=True, help="output directory (merged model, adapter/, manifest, results)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--checkpoint-dir", help="save resumable checkpoints here (and resume from the newest)")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after table")
    p.add_argument("--show", type=int, default=10, help="rows of each table to print (all go to results.json)")


def run(args) -> int:
    import torch
    from accelerate import Accelerator

    from ..core.config import ConfigError, load_config, parse_set
    from ..core.files import FactFileError
    from ..core.models import ALIASES, load_model
    from ..editing.methods import ERASERS
    from ..evaluating.before_after import forget_groups, measure_forget
    from ..unlearning.forget import all_questions, default_method, erase_requests, forget, items_recipe
    from ..unlearning.items import Formatting, numbered_items
    from ..unlearning.methods import get_unlearner

    numbered_forget = numbered_items(args.facts)  # validate input before anything slow
    numbered_retain = numbered_items(args.retain) if args.retain else []
    forget_items = [x for _, x in numbered_forget]
    retain_items = [x for _, x in numbered_retain] or None
    numbered_holdout = numbered_items(args.holdout) if args.holdout else []
    holdout_items = [x for _, x in numbered_holdout] or None
    if args.method is None:
        args.method = default_method(forget_items)
        print(f"llm-edit: method {args.method} (the default for these items; --method to choose)", file=sys.stderr)
    check_out(args)
    erasing = args.method in ERASERS
    if erasing:
        try:
            erase_requests(forget_items)  # facts only: fail now, not after loading the model
        except ValueError as e:
            raise FactFileError(args.facts, None, None, str(e)) from None
        if retain_items:
            print(f"llm-edit: note: {args.method} has no retain term; --retain is only evaluated", file=sys.stderr)
        if holdout_items:
            raise ConfigError(f"--holdout: {args.method} edits weights once and has no stop; a holdout serves the "
                              "unlearners (--method npo, ...)")
    spec = ERASERS[args.method] if erasing else get_unlearner(args.method)
    layers_to_sets(args, spec.config)
    alias = ALIASES.get(args.model)
    config, _ = load_config(spec.config, args.method, recipe=args.recipe,
                            model_recipe=items_recipe(args.method, alias.recipe if alias else None, forget_items),
                            sets=args.sets)
    if holdout_items and "stop_forget_prob" in parse_set(args.sets):
        raise ConfigError("--holdout sets stop_forget_prob; do not --set it as well")
    if not erasing and not retain_items and all_questions(forget_items):
        # measured on TOFU: without the neighbouring authors as --retain, forgetting two authors took the
        # others' answers down from 0.55 to 0.075 (README, "The question-file default")
        print("llm-edit: warning: questions forgotten without --retain: answers on the same topic may go with "
              "them; pass the questions to keep as --retain", file=sys.stderr)
    use_cpu = args.device == "cpu" or (args.device is None and not torch.cuda.is_available())
    acc = Accelerator(cpu=use_cpu)
    if getattr(config, "sam_rho", 0) > 0 and acc.num_processes > 1:
        raise ConfigError("sam_rho: sharpness-aware unlearning runs on one process")
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device or acc.device,
                            trust_remote_code=args.trust_remote_code)
    check_items_fit(model, tok, args.facts, numbered_forget)
    if args.retain:
        check_items_fit(model, tok, args.retain, numbered_retain)
    if args.holdout:
        check_items_fit(model, tok, args.holdout, numbered_holdout)
    main_process = acc.is_main_process
    fmt = Formatting() if erasing else Formatting(config.use_chat_template, config.system_prompt)
    evaluate = not args.no_eval and main_process
    extra = {} if erasing else {"checkpoint_dir": args.checkpoint_dir, "accelerator": acc, "holdout": args.holdout}
    measured = measure_forget(model, tok, forget_groups(forget_items, retain_items), fmt,
                              lambda: forget(model, tok, forget_items, retain_items, args.method, recipe=args.recipe,
                                             sets=args.sets, progress=main_process, **extra), evaluate=evaluate)
    if not main_process:
        return 0
    result, check = measured.result, measured.check
    rows, summary = (check.rows, check.summary) if check else ([], {})
    result.manifest["eval"] = summary
    result.save(Path(args.out), overwrite=args.overwrite, extra_json={"results.json": rows} if check else None)
    if check:
        print(check.text(args.show))
    t = result.manifest["training"]
    if erasing:
        print(f"\n{args.method}: {len(forget_items)} fact(s) erased by rank-one edits of layer "
              f"{result.manifest['layer']} in {t['seconds']:.1f} s; patch: {Path(args.out) / 'patch.safetensors'}")
        return 0
    print(f"\n{args.method}: {t['steps']} steps in {t['seconds']:.1f} s (effective batch {t['effective_batch_size']}, "
          f"{t['processes']} process(es)); retain: {result.manifest['retain_source']}"
          + (f"; stopped early: {t['stopped_early']}" if t["stopped_early"] else "") + f" -> {args.out}")
    return 0
