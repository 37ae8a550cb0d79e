"""ROME (or another editor) on the development set: each fact edited alone on the original
model, then reverted; or, with ``--batch``, all facts edited at once (MEMIT's setting).

    python evals/rome_dev.py                                  # the recipe's values
    python evals/rome_dev.py --set layer=6 --out evals/results/rome_layer6.json
    python evals/rome_dev.py --grid layer=2,4,6,8             # one run per value, one table
    python evals/rome_dev.py --method memit --batch           # one batch of all the facts

Reports CounterFact's efficacy, generalisation and specificity (llm_edit.evaluating.metrics), pooled over
all prompts of each kind, the median edit time, and checks that every revert is bit-exact.
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
from llm_edit.evaluating.metrics import edit_table, fluency, summarise  # noqa: E402
from llm_edit.core.models import fingerprint  # noqa: E402

HERE = Path(__file__).resolve().parent


def run_batch(model, tok, requests, sets, method):
    """Edit all requests in one call (the method's batches), score them all, revert."""
    base = fingerprint(model)
    t0 = time.perf_counter()
    result = edit(model, tok, requests, method, sets=sets)
    seconds = time.perf_counter() - t0
    rows = edit_table(model, tok, requests)
    result.revert()
    summary = {"sets": sets, "method": method, "after": summarise(rows), "edit_seconds": round(seconds, 1),
               "facts_per_second": round(len(requests) / seconds, 3), "reverts_bit_exact": fingerprint(model) == base,
               "layer": result.manifest["layer"], "hyperparameters": result.manifest["hyperparameters"],
               "median_edit_seconds": round(seconds / len(requests), 2)}
    return summary, result.per_request, rows


def _share(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"  # a fact without paraphrases or neighbours


def run_dev(model, tok, requests, sets, fluency_too=False, method="rome"):
    """Edit each request alone on the original model, score it, revert it."""
    base = fingerprint(model)
    # statistics and context prefixes are computed once, outside the timed edits
    warm = edit(model, tok, requests[:1], method, sets=sets, progress=False)
    warm.revert()
    rows, seconds, per_fact, flu_after = [], [], [], []
    for i, request in enumerate(requests):
        t0 = time.perf_counter()
        result = edit(model, tok, [request], method, sets=sets, progress=False)
        seconds.append(time.perf_counter() - t0)
        table = edit_table(model, tok, [request])
        for row in table:
            row["request"] = i
        rows += table
        if fluency_too:
            flu_after.append(fluency(model, tok, [request.text]))
        result.revert()
        s = summarise(table)
        per_fact.append({"subject": request.subject, "target_new": request.target_new, **s,
                         "seconds": round(seconds[-1], 2), **result.per_request[0]})
        print(f"[{i + 1:>2}/{len(requests)}] {request.subject:<28} -> {request.target_new:<12} "
              f"eff={s['efficacy']:.0f} gen={_share(s['generalisation'])} spec={_share(s['specificity'])} "
              f"{seconds[-1]:.1f}s", flush=True)
    summary = {"sets": sets, "after": summarise(rows), "median_edit_seconds": round(statistics.median(seconds), 2),
               "reverts_bit_exact": fingerprint(model) == base,
               "hyperparameters": warm.manifest["hyperparameters"], "statistics": warm.manifest["statistics"]}
    if fluency_too:
        summary["fluency_after_mean"] = sum(flu_after) / len(flu_after)
    return summary, per_fact, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--method", default="rome")
    ap.add_argument("--batch", action="store_true", help="edit all facts in one call instead of one at a time")
    ap.add_argument("--facts", default=str(HERE / "data" / "dev_rewrites.jsonl"))
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--grid", help="KEY=V1,V2,...: one run per value (on top of --set)")
    ap.add_argument("--limit", type=int)
    ap.add_argument("--fluency", action="store_true", help="also n-gram entropy before/after (slower)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", help="write the per-fact results and summary here (JSON)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    requests = read_requests(args.facts, limit=args.limit)
    model, tok = load_model(args.model, device="cpu")
    before = summarise(edit_table(model, tok, requests))
    if args.fluency:
        before["fluency"] = fluency(model, tok, [r.text for r in requests])
    variants = [args.sets]
    if args.grid:
        key, _, values = args.grid.partition("=")
        variants = [args.sets + [f"{key}={v}"] for v in values.split(",")]
    runs = []
    for sets in variants:
        if args.batch:
            summary, per_fact, rows = run_batch(model, tok, requests, sets, args.method)
        else:
            summary, per_fact, rows = run_dev(model, tok, requests, sets, args.fluency, args.method)
        runs.append({"summary": summary, "per_fact": per_fact, "rows": rows})
    print(f"\nbefore editing: {json.dumps(before)}")
    print(f"{'overrides':<36}{'efficacy':>9}{'general.':>9}{'specif.':>9}{'median s':>9}{'exact':>7}")
    for run in runs:
        s = run["summary"]
        a = s["after"]
        print(f"{' '.join(s['sets']) or '(recipe)':<36}{a['efficacy']:>9.3f}{a['generalisation']:>9.3f}"
              f"{a['specificity']:>9.3f}{s['median_edit_seconds']:>9.2f}{str(s['reverts_bit_exact']):>7}")
    if args.out:
        write_json(Path(args.out), {"before": before, "runs": runs, "n_facts": len(requests),
                                    "facts_sha256": hashlib.sha256(Path(args.facts).read_bytes()).hexdigest(),
                                    "threads": torch.get_num_threads(), "command": sys.argv, **run_info()})
    return 0 if all(r["summary"]["reverts_bit_exact"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
