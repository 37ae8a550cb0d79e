"""Tune one recipe key on one fact set, report the choice on another: a recipe search that
cannot overfit the figures it reports.

    python evals/tune_split.py --method rome --grid expand=none,forms \
        --tune evals/data/counterfact_train_known60.jsonl --report evals/data/counterfact_val_heldout120.jsonl \
        --out evals/results/tune_rome_expand.json

For each value of ``--grid`` the facts of ``--tune`` are edited as ``llm-edit edit`` edits them
(ROME one after another; MEMIT and AlphaEdit in the recipe's batches), measured, and reverted
(checked bit for bit). The value with the best score on the tuning set is then run on
``--report``, next to the recipe's own value, and both sets' figures are printed and written:
the recipe's comment quotes the tuning figure it was chosen by and the report figure it got.
The score is the mean of CounterFact's efficacy, generalisation and specificity and the
generation success in the chat, question and in-context forms (``evaluating.edit_forms``),
over those that apply. The report set is only ever edited with the chosen value and the
recipe's: nothing is chosen on it. The tuning half is written to ``--out`` as soon as it ends;
``--tuned-in EARLIER.json`` takes the choice of such an earlier run (same method, unchanged
``--tune`` file and limit, same grid and ``--set``) and runs only the report set.

Each tuning run keeps its ``misses`` (the generation judgments it failed, with the answers) to
read; ``--tune-only`` stops there.

``--tolerance T`` chooses for cost: the first value, in the grid's order, whose tuning score is
within T of the best one's. List the cheaper values first (``--grid v_steps=8,12,20
--tolerance 0.02``: the fewest steps that score as well, up to T).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_edit import edit, load_model, read_requests  # noqa: E402
from llm_edit.core.files import run_info, write_json  # noqa: E402
from llm_edit.core.models import fingerprint  # noqa: E402
from llm_edit.evaluating.before_after import edit_metrics  # noqa: E402
from llm_edit.evaluating.edit_forms import before_scores, generation_scores  # noqa: E402

SCORED = ("efficacy", "generalisation", "specificity", "gen_chat", "gen_question", "gen_in_context")
SHOWN = ("efficacy", "generalisation", "specificity", "gen_prompt", "gen_chat", "gen_question", "gen_in_context",
         "portability", "perplexity")


def score(metrics: dict) -> float:
    values = [metrics[k] for k in SCORED if metrics.get(k) is not None]
    return sum(values) / len(values) if values else 0.0


class FactSet:
    """A fact file with its original model's measurements, taken once."""

    def __init__(self, model, tok, path: str, limit: int | None):
        self.path, self.requests = path, read_requests(path, limit=limit)
        self.sha256 = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        self.prompts = [r.text for r in self.requests[:20]]
        _, self.answers, self.before = edit_metrics(model, tok, self.requests, self.prompts)
        self.before.update(before_scores(self.answers))

    def run(self, model, tok, method: str, sets: list[str], misses: bool = False) -> dict:
        base = fingerprint(model)
        t0 = time.perf_counter()
        result = edit(model, tok, self.requests, method, sets=sets, progress=True)
        seconds = time.perf_counter() - t0
        _, answers, after = edit_metrics(model, tok, self.requests, self.prompts)
        after.update(generation_scores(answers, self.answers))
        result.revert()
        per_edit = [r["seconds"] for r in result.per_request if "seconds" in r]
        for later in result.manifest.get("later_rounds", []):  # a fact edited again: its rounds' time together
            for i, info in zip(later["requests"], later["per_request"]):
                per_edit[i] += info.get("seconds", 0.0)
        return {"sets": sets, "after": after, "score": round(score(after), 4), "edit_seconds": round(seconds, 1),
                "median_edit_seconds": round(statistics.median(per_edit), 2) if per_edit else None,
                "reverts_bit_exact": fingerprint(model) == base,
                "hyperparameters": result.manifest["hyperparameters"],
                **({"misses": form_misses(answers, self.answers)} if misses else {})}


def form_misses(after, before) -> list[dict]:
    """The generation judgments an edit failed, to read (the tuning set's only: the report set's
    answers are not for choosing)."""
    counted = {(a.request, a.form) for a in before if a.says_old}
    return [{"request": a.request, "form": a.form, "prompt": a.prompt[-160:], "answer": a.answer,
             "expected": a.expected, "unwanted": a.unwanted}
            for a in after if a.form != "portability" and (a.request, a.form) in counted and not a.holds]


def earlier_tuning(path: Path, args, key: str, values: list[str], n_tune: int):
    """The tuning half of an earlier run (``--tuned-in``): its fact set, its runs and its choice, after
    checking that it tuned this method on this very file (and limit) over this grid with these
    ``--set`` items."""
    earlier = json.loads(path.read_text())
    sha256 = hashlib.sha256(Path(args.tune).read_bytes()).hexdigest()
    if earlier["tune"]["sha256"] != sha256:
        raise SystemExit(f"{path}: it tuned on another version of {args.tune} (sha256 differs)")
    if earlier.get("method", args.method) != args.method:
        raise SystemExit(f"{path}: it tuned {earlier['method']}, not {args.method}")
    if earlier["tune"]["n"] != n_tune:
        raise SystemExit(f"{path}: it tuned on {earlier['tune']['n']} facts of {args.tune}, not this --tune-limit's")
    tuned = earlier["tune"]["runs"]
    expected = [args.sets + [f"{key}={v}"] for v in values]
    if [r["sets"] for r in tuned] != expected:
        raise SystemExit(f"{path}: its runs were {[r['sets'] for r in tuned]}, this grid and --set give {expected}")
    best = choose(tuned, args.tolerance)
    tune = argparse.Namespace(requests=[None] * earlier["tune"]["n"], sha256=sha256, before=earlier["tune"]["before"])
    return tune, tuned, best


def choose(runs: list[dict], tolerance: float) -> dict:
    """The first run whose score is within ``tolerance`` of the best (0: the best; ties go to the first)."""
    top = max(r["score"] for r in runs)
    return next(r for r in runs if r["score"] >= top - tolerance)


def table(title: str, before: dict, runs: list[dict]) -> str:
    def cell(v):
        return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [title, "| run | " + " | ".join(SHOWN) + " | score | median s |", "|---" * (len(SHOWN) + 3) + "|",
             "| original | " + " | ".join(cell(before.get(k)) for k in SHOWN) + " | | |"]
    for run in runs:
        a = run["after"]
        lines.append(f"| {' '.join(run['sets']) or '(recipe)'} | " + " | ".join(cell(a.get(k)) for k in SHOWN)
                     + f" | {run['score']:.3f} | {cell(run['median_edit_seconds'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--method", default="rome")
    ap.add_argument("--tune", required=True, help="the fact set values are chosen on")
    ap.add_argument("--report", required=True, help="a disjoint fact set the choice is reported on")
    ap.add_argument("--grid", required=True, help="KEY=V1,V2,...")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="fixed overrides for every run")
    ap.add_argument("--tune-limit", type=int)
    ap.add_argument("--report-limit", type=int)
    ap.add_argument("--tuned-in", help="an earlier run's output (written once its tuning half finished; same "
                    "--method, --tune file unchanged, --tune-limit, --grid and --set): take its choice and run only "
                    "the report set")
    ap.add_argument("--tolerance", type=float, default=0.0,
                    help="choose the first grid value whose tuning score is within this of the best (list cheaper "
                    "values first)")
    ap.add_argument("--tune-only", action="store_true", help="stop after the tuning half (its misses are in --out)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.tolerance < 0:
        ap.error("--tolerance must be >= 0")  # exit status 2, before the model loads
    key, _, values = args.grid.partition("=")
    tune_facts, report_facts = read_requests(args.tune), read_requests(args.report)  # bad files fail before loading
    shared = {(r.subject, r.prompt) for r in tune_facts} & {(r.subject, r.prompt) for r in report_facts}
    if shared:
        raise SystemExit(f"--tune and --report share {len(shared)} fact(s), e.g. {sorted(shared)[0]}: not disjoint")
    if args.tuned_in:  # checked before the model loads
        tune, tuned, best = earlier_tuning(Path(args.tuned_in), args, key, values.split(","),
                                           len(tune_facts[:args.tune_limit]))
    model, tok = load_model(args.model, device="cpu")
    if not args.tuned_in:
        tune = FactSet(model, tok, args.tune, args.tune_limit)
        tuned = [tune.run(model, tok, args.method, args.sets + [f"{key}={v}"], misses=True) for v in values.split(",")]
        best = choose(tuned, args.tolerance)
    print(table(f"\ntuning set {args.tune} ({len(tune.requests)} facts)", tune.before, tuned))

    def output(report=None) -> dict:
        return {"method": args.method, "grid": args.grid, "chosen": best["sets"], "score": list(SCORED),
                "tolerance": args.tolerance,
                "tune": {"facts": args.tune, "n": len(tune.requests), "sha256": tune.sha256, "before": tune.before,
                         "runs": tuned, **({"from": args.tuned_in} if args.tuned_in else {})},
                "report": report, "threads": torch.get_num_threads(), "command": sys.argv, **run_info()}

    write_json(Path(args.out), output())  # the tuning half, for --tuned-in if the report half does not finish
    if args.tune_only:
        return 0 if all(r["reverts_bit_exact"] for r in tuned) else 1
    report = FactSet(model, tok, args.report, args.report_limit)
    reported = [report.run(model, tok, args.method, args.sets)]
    if best["hyperparameters"][key] != reported[0]["hyperparameters"][key]:  # the recipe's own value won: once is enough
        reported.append(report.run(model, tok, args.method, best["sets"]))
    print(table(f"\nreport set {args.report} ({len(report.requests)} facts): the recipe, then the choice",
                report.before, reported))
    write_json(Path(args.out), output({"facts": args.report, "n": len(report.requests), "sha256": report.sha256,
                                       "before": report.before, "runs": reported}))
    exact = all(r["reverts_bit_exact"] for r in tuned + reported)
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
