"""ROME on the development set: each fact edited alone on the original model, then reverted.

    python evals/rome_dev.py                       # the recipe's values
    python evals/rome_dev.py --set layer=6 --out evals/results/rome_layer6.json

Reports CounterFact's efficacy, generalisation and specificity (llm_edit.metrics), pooled over
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
from llm_edit.io import run_info, write_json  # noqa: E402
from llm_edit.metrics import edit_table, fluency, summarise  # noqa: E402
from llm_edit.models import fingerprint  # noqa: E402

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--facts", default=str(HERE / "data" / "dev_rewrites.jsonl"))
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--limit", type=int)
    ap.add_argument("--fluency", action="store_true", help="also n-gram entropy before/after (slower)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", help="write the per-fact results and summary here (JSON)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    requests = read_requests(args.facts, limit=args.limit)
    model, tok = load_model(args.model, device="cpu")
    base = fingerprint(model)
    before = edit_table(model, tok, requests)
    flu_before = fluency(model, tok, [r.text for r in requests]) if args.fluency else None
    # statistics and context prefixes are computed once, outside the timed edits
    warm = edit(model, tok, requests[:1], sets=args.sets, progress=False)
    warm.revert()

    rows, seconds, per_fact, flu_after = [], [], [], []
    for i, request in enumerate(requests):
        t0 = time.perf_counter()
        result = edit(model, tok, [request], sets=args.sets, progress=False)
        seconds.append(time.perf_counter() - t0)
        table = edit_table(model, tok, [request])
        for row in table:
            row["request"] = i
        rows += table
        if args.fluency:
            flu_after.append(fluency(model, tok, [request.text]))
        result.revert()
        s = summarise(table)
        per_fact.append({"subject": request.subject, "target_new": request.target_new, **s,
                         "seconds": round(seconds[-1], 2), **result.per_request[0]})
        print(f"[{i + 1:>2}/{len(requests)}] {request.subject:<28} -> {request.target_new:<12} "
              f"eff={s['efficacy']:.0f} gen={s['generalisation']:.2f} spec={s['specificity']:.2f} "
              f"{seconds[-1]:.1f}s", flush=True)
    exact = fingerprint(model) == base
    summary = {"before": summarise(before), "after": summarise(rows), "n_facts": len(requests),
               "median_edit_seconds": round(statistics.median(seconds), 2),
               "reverts_bit_exact": exact, "hyperparameters": warm.manifest["hyperparameters"],
               "facts_sha256": hashlib.sha256(Path(args.facts).read_bytes()).hexdigest(),
               "threads": torch.get_num_threads(), **run_info()}
    if args.fluency:
        summary["fluency_before"] = flu_before
        summary["fluency_after_mean"] = sum(flu_after) / len(flu_after)
    print(json.dumps({k: summary[k] for k in ("before", "after", "median_edit_seconds", "reverts_bit_exact")}))
    if args.out:
        write_json(Path(args.out), {"summary": summary, "per_fact": per_fact, "rows": rows})
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
