"""``llm-edit eval``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_model_args, check_out, check_requests_fit, eval_settings, load, tofu_task

HELP = "evaluate a model: the TOFU forget/retain suite or the CounterFact editing suite"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..evaluating.suites import SUITES

    add_model_args(p)
    p.add_argument("--suite", required=True, choices=list(SUITES))
    p.add_argument("--split", default="forget10", help="TOFU forget split: forget01, forget05, forget10")
    p.add_argument("--authors", type=int, help="CPU-sized TOFU: only the first N authors (2-20)")
    p.add_argument("--forget-authors", type=int, help="CPU-sized TOFU: forget the last K of the N authors")
    p.add_argument("--forget-block", type=int, default=0, help="CPU-sized TOFU: forget the B-th block of K authors "
                                                                "counted from the last (0: the last K)")
    p.add_argument("--eval-limit", type=int, help="TOFU: at most this many retain / real-author / world-fact rows")
    p.add_argument("--retain-ref", help="TOFU: the retain model's report.json (or its folder), or a retain model "
                                        "directory (evaluated here, cached): needed for forget quality and PrivLeak")
    p.add_argument("--tofu-data", help="folder of TOFU's JSON files (default: $LLM_EDIT_TOFU_DATA, else the hub)")
    p.add_argument("--facts", help="counterfact: edit requests (JSONL, or CounterFact JSON in EasyEdit's flat format)")
    p.add_argument("--limit", type=int, help="counterfact: only the first N requests")
    p.add_argument("--max-new-tokens", type=int, default=200, help="greedy answer length cap (TOFU: 200)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per scoring pass")
    p.add_argument("--generation-batch-size", type=int, default=32, help="prompts per generation batch")
    p.add_argument("--no-cache", action="store_true", help="recompute even if this evaluation is cached")
    p.add_argument("--out", required=True, help="output directory: report.json, report.md, PNG plots")
    p.add_argument("--overwrite", action="store_true")


def run(args) -> int:
    from ..core.files import atomic_directory

    check_out(args)
    if args.suite == "counterfact":
        return _eval_counterfact(args)
    from ..evaluating.report import tofu_summary, write_tofu
    from ..evaluating.tofu import attach_reference, evaluate_tofu, read_reference

    task = tofu_task(args)  # data problems fail before the model loads
    settings = eval_settings(args)
    reference = source = None
    if args.retain_ref:
        ref_path = Path(args.retain_ref)
        if ref_path.suffix == ".json" or (ref_path / "report.json").is_file():
            reference, source = read_reference(ref_path), str(ref_path)
    model, tok = load(args)
    if args.retain_ref and reference is None:  # a retain model: evaluate it on the same task (cached)
        from ..core.models import load_model

        ref_model, ref_tok = load_model(args.retain_ref, dtype=args.dtype, device=args.device,
                                        trust_remote_code=args.trust_remote_code)
        reference = evaluate_tofu(ref_model, ref_tok, task, settings, name="retain", use_cache=not args.no_cache)
        source = args.retain_ref
        del ref_model
    report = evaluate_tofu(model, tok, task, settings, name=args.model, use_cache=not args.no_cache)
    rows = {args.model: report}
    if reference is not None:
        attach_reference(report, reference, source)
        rows["retain (reference)"] = attach_reference(json.loads(json.dumps(reference)), reference, source)
    with atomic_directory(Path(args.out), overwrite=args.overwrite) as out:
        write_tofu(out, report, rows, f"TOFU evaluation of {args.model}", reference=reference)
    a = report["aggregates"]
    print(tofu_summary(rows, f"TOFU evaluation of {args.model}"))
    print(f"forget quality: {a['forget_quality']['value'] if a['forget_quality']['value'] is not None else 'n/a'}"
          f"; model utility: {a['model_utility']}; report: {Path(args.out) / 'report.md'}")
    return 0


GEN_KEYS = ("gen_prompt", "gen_chat", "gen_question", "gen_in_context", "portability")


def _eval_counterfact(args) -> int:
    from ..core.config import ConfigError
    from ..core.files import atomic_directory, atomic_write_text, write_json
    from ..editing.requests import numbered_requests
    from ..evaluating.metrics import counterfact_suite

    if not args.facts:
        raise ConfigError("--suite counterfact needs --facts FILE")
    numbered = numbered_requests(args.facts, limit=args.limit)
    requests = [r for _, r in numbered]
    if not any(r.target_true for r in requests):
        raise ConfigError(f"{args.facts}: no request has target_true (the model's original answer), "
                          "so efficacy and specificity cannot be compared")
    model, tok = load(args)
    check_requests_fit(model, tok, args.facts, numbered)
    report = counterfact_suite(model, tok, requests)
    report.update({"model": args.model, "facts": str(args.facts), "requests": len(requests)})
    a = report["aggregates"]
    md = (f"# CounterFact evaluation of {args.model}\n\n{len(requests)} requests from `{args.facts}`\n\n"
          "| efficacy | generalisation | specificity | fluency | perplexity (generic text) |\n|---|---|---|---|---|\n"
          + "| " + " | ".join("n/a" if a[k] is None else f"{a[k]:.3f}"
                              for k in ("efficacy", "generalisation", "specificity", "fluency", "perplexity"))
          + " |\n\n"
          "Efficacy / generalisation: share of prompts / paraphrases where P(target_new) > P(target_true); "
          "specificity: share of neighbourhood prompts where the true object still wins (ROME §4.2).\n\n"
          "| by generation | " + " | ".join(GEN_KEYS) + " |\n|---|" + "---|" * len(GEN_KEYS) + "\n"
          + "| share holding | " + " | ".join("n/a" if a[k] is None else f"{a[k]:.3f} of {a[k + '_n']}"
                                              for k in GEN_KEYS) + " |\n\n"
          "gen_<form>: the greedy answer (32 tokens) names target_new and not target_true; portability: a "
          "one-hop probe's answer names its target (llm_edit/evaluating/edit_forms.py).\n")
    with atomic_directory(Path(args.out), overwrite=args.overwrite) as out:
        write_json(out / "report.json", report)
        atomic_write_text(out / "report.md", md)
    print(md)
    return 0
