"""Audit unlearned models of the CPU-sized TOFU: what survives each probe and attack.

    python evals/audit_tofu.py --method npo [--authors 10] [--set KEY=VALUE ...] [--audit-set KEY=VALUE ...]
                               [--out evals/results/audit_tofu_npo]

Uses the protocol's cached fine-tuned and retain models (``llm-edit tofu`` with the same
``--authors``/``--forget-authors``/``--split`` builds them; this script builds them too if they
are missing), unlearns the forget authors from the fine-tuned model with ``--method`` and the
protocol's stopping rule (``--method none`` audits the fine-tuned model itself), and audits it against the fine-tuned model (the original) and the
retain model: ``audit.json``, ``audit.md``, ``recovery.png`` in ``--out``; with the retain model,
also TOFU's forget quality and model utility of the unlearned, fine-tuned and retain models
(``tofu`` in ``audit.json``, from ``evaluate_tofu``, cached). The forget items carry
TOFU's paraphrased questions; in-context examples and benign relearning use the retain
authors' rows; membership inference uses the holdout rows.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from llm_edit import forget  # noqa: E402
from llm_edit.auditing.audit import AuditConfig, audit, write_audit  # noqa: E402
from llm_edit.core.config import build_config, parse_set  # noqa: E402
from llm_edit.unlearning.forget import items_recipe  # noqa: E402
from llm_edit.unlearning.items import parse_item  # noqa: E402
from llm_edit.core.files import atomic_directory  # noqa: E402
from llm_edit.core.models import ALIASES, load_model  # noqa: E402
from llm_edit.evaluating.tofu import EvalSettings, attach_reference, evaluate_tofu, make_task  # noqa: E402
from llm_edit.evaluating.tofu_metrics import mean  # noqa: E402
from llm_edit.evaluating.tofu_protocol import _recipe_name, finetuned_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--method", default="npo", help="an unlearner, or 'none' to audit the fine-tuned model")
    ap.add_argument("--split", default="forget10")
    ap.add_argument("--authors", type=int, default=10)
    ap.add_argument("--tofu-data")
    ap.add_argument("--forget-authors", type=int, default=2)
    ap.add_argument("--forget-block", type=int, default=0,
                    help="forget the B-th block of --forget-authors authors from the last (0: the last ones)")
    ap.add_argument("--eval-limit", type=int, default=40)
    ap.add_argument("--retain-rows", type=int, default=40, help="retain rows for in-context, relearning, utility")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="unlearning hyper-parameter")
    ap.add_argument("--recipe")
    ap.add_argument("--audit-set", dest="audit_sets", action="append", default=[])
    ap.add_argument("--no-retain-model", action="store_true", help="audit without the retain model's floor")
    ap.add_argument("--as-forget", action="store_true",
                    help="unlearn as `llm-edit forget` would: the model's own recipe (not its TOFU recipe) and the "
                         "recipe's stop, not the protocol's")
    ap.add_argument("--no-retain-set", action="store_true",
                    help="unlearn without the retain authors (as `llm-edit forget` without --retain: sampled text)")
    ap.add_argument("--holdout", action="store_true",
                    help="with --as-forget: pass TOFU's holdout rows as forget's holdout (its stop, as `llm-edit forget "
                         "--holdout`)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.holdout and not args.as_forget:
        ap.error("--holdout goes with --as-forget (without it the protocol's stop is already the holdout's)")

    task = make_task(args.split, args.authors, data=args.tofu_data, eval_limit=args.eval_limit,
                     forget_authors=args.forget_authors, forget_block=args.forget_block)
    config = build_config(AuditConfig, parse_set(args.audit_sets), "--audit-set") if args.audit_sets else AuditConfig()
    t0 = time.perf_counter()
    original, tok, _ = finetuned_model(args.model, task.train, "finetuned")
    retain_model = None
    if not args.no_retain_model:
        retain_model, _, _ = finetuned_model(args.model, task.retain_train, "retain")
    forget_items = [parse_item(r) for r in task.forget_eval]  # with paraphrased_question
    retain_items = [parse_item({"question": r["question"], "answer": r["answer"]})
                    for r in task.retain_train[: args.retain_rows]]
    holdout_items = [parse_item(r) for r in task.holdout]
    unlearn_s = 0.0
    if args.method == "none":
        unlearned = original
    else:
        copy_model, _ = load_model(original.name_or_path)
        stop = {}
        if not args.as_forget and not any(x.startswith("stop_forget_prob") for x in args.sets):
            # the protocol's stopping rule: the fine-tuned model's holdout probability (its evaluation is cached)
            holdout = evaluate_tofu(original, tok, task, EvalSettings(), progress=False)["items"]["holdout"]
            stop = {"stop_forget_prob": round(mean([r["probability"] for r in holdout]), 6)}
        forget_train = [parse_item({"question": r["question"], "answer": r["answer"]}) for r in task.forget_train]
        # the fine-tuned copy is loaded from a path, so name the base model's recipe outright; as the
        # command does, its question recipe for these question items where the method has one
        recipe = args.recipe or (items_recipe(args.method, ALIASES[args.model].recipe, forget_train) if args.as_forget
                                 else _recipe_name(args.method, args.model))
        retain_set = None if args.no_retain_set else [parse_item(r) for r in task.retain_train]
        t1 = time.perf_counter()
        result = forget(copy_model, tok, forget_train,
                        retain_set, args.method, recipe=recipe, sets=args.sets,
                        holdout=[parse_item({"question": r["question"], "answer": r["answer"]}) for r in task.holdout]
                        if args.holdout else None, **stop)
        unlearn_s = time.perf_counter() - t1
        unlearned = result.merge()
    t1 = time.perf_counter()
    report = audit(unlearned, original, tok, forget_items, retain_items=retain_items, holdout_items=holdout_items,
                   retain_model=retain_model, config=config)
    report.update({"model": f"{args.model} fine-tuned on TOFU, unlearned with {args.method}",
                   "unlearning": None if args.method == "none" else {
                       "hyperparameters": result.manifest["hyperparameters"], "training": result.manifest["training"]},
                   "task": task.describe(), "method": args.method, "sets": args.sets, "as_forget": args.as_forget,
                   "recipe": None if args.method == "none" else result.manifest.get("recipe"),
                   "retain_set": not args.no_retain_set, "holdout_given": args.holdout, "unlearn_s": round(unlearn_s, 1),
                   "audit_s": round(time.perf_counter() - t1, 1), "total_s": round(time.perf_counter() - t0, 1)})
    if retain_model is not None:
        report["tofu"] = tofu_figures({"unlearned": unlearned, "original": original, "retain": retain_model}, tok, task)
    with atomic_directory(Path(args.out), overwrite=True) as out:
        write_audit(out, report, f"Audit: {args.method} on CPU-sized TOFU ({args.authors} authors)")
        if "tofu" in report:
            rows = [f"| {name} | {r['forget_quality']:.4g} | {r['model_utility']:.3f} | {r['forget_truth_ratio']:.3f} "
                    f"| {r['forget_rouge']:.3f} |" for name, r in report["tofu"].items()]
            with open(out / "audit.md", "a") as f:
                f.write("\n## TOFU (against the retain model)\n\n| model | forget quality | model utility | "
                        "forget truth ratio | forget ROUGE-L |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    print(Path(args.out, "audit.md").read_text().split("\n## How to read")[0])
    for name, row in report.get("tofu", {}).items():
        print(f"TOFU {name}: forget quality {row['forget_quality']:.4g}, model utility {row['model_utility']:.3f}")
    print(f"audit {report['audit_s']} s, unlearning {report['unlearn_s']} s")


def tofu_figures(models: dict, tok, task) -> dict:
    """TOFU's headline pair for each model: forget quality against the retain model, model utility."""
    reports = {name: evaluate_tofu(m, tok, task, EvalSettings(), progress=False, name=name) for name, m in models.items()}
    out = {}
    for name, rep in reports.items():
        agg = attach_reference(rep, reports["retain"], "retain model")["aggregates"]
        out[name] = {"forget_quality": agg["forget_quality"]["value"], "model_utility": agg["model_utility"],
                     "forget_truth_ratio": agg["forget_truth_ratio"], "forget_rouge": agg["forget_rouge"]}
    return out


if __name__ == "__main__":
    main()
