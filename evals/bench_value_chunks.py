"""Benchmark: how value-optimisation rows are cut into chunks, and what a forward call costs.

    python evals/bench_value_chunks.py --out evals/results/bench_rome_chunks.json

ROME edits of the dev facts with the recipe (derived forms: rows of different lengths), once per
``call_tokens`` setting of ``value_rows._chunk_bounds``: a huge value puts every row in one chunk
padded to the longest (the behaviour before chunks were cut), 0 gives every length its own
chunk. Reports the median seconds per value step and whether the edits agree (the same rows in
other batches: float rounding only). Run it alone: it is a timing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_edit import edit, load_model, read_requests  # noqa: E402
from llm_edit.core.files import run_info, write_json  # noqa: E402
from llm_edit.editing import value_rows  # noqa: E402

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--facts", default=str(HERE / "data" / "dev_rewrites.jsonl"))
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--call-tokens", default="1000000,0,8,16,32")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    requests = read_requests(args.facts, limit=args.n)
    model, tok = load_model(args.model, device="cpu")
    edit(model, tok, requests[:1], sets=args.sets, progress=False).revert()  # statistics, prefixes
    default = value_rows._CALL_TOKENS
    runs = []
    try:
        for call_tokens in [int(x) for x in args.call_tokens.split(",")]:
            value_rows._CALL_TOKENS = call_tokens
            per_step, totals, deltas = [], [], []
            for request in requests:
                t0 = time.perf_counter()
                result = edit(model, tok, [request], sets=args.sets, progress=False)
                totals.append(time.perf_counter() - t0)
                part = result.per_request[0]
                per_step.append(part["value_seconds"] / max(part["steps"] + 1, 1))
                deltas.append(torch.cat([result.delta.dense(name).flatten() for name in sorted(result.delta.factors)]))
                result.revert()
            runs.append({"call_tokens": call_tokens, "median_seconds_per_value_step": round(statistics.median(per_step), 3),
                         "median_edit_seconds": round(statistics.median(totals), 2), "_deltas": deltas})
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "_deltas"}), flush=True)
    finally:
        value_rows._CALL_TOKENS = default
    first = runs[0]["_deltas"]
    for run in runs:
        run["largest_relative_difference_to_first"] = max(
            float((a - b).norm() / b.norm().clamp(min=1e-12)) for a, b in zip(run["_deltas"], first))
        del run["_deltas"]
    report = {"model": args.model, "facts": args.facts, "n_edits": len(requests), "threads": torch.get_num_threads(),
              "overrides": args.sets, "runs": runs, **run_info()}
    print(json.dumps(report, indent=2))
    if args.out:
        write_json(Path(args.out), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
