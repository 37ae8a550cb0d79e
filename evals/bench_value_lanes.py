"""Benchmark: ROME edits with the value optimisation's rows packed into lanes, against rows in lanes
of their own (the layout before packing), alternating in one process.

    python evals/bench_value_lanes.py --out evals/results/bench_value_lanes.json
    python evals/bench_value_lanes.py --model gemma --out evals/results/gemma/bench_value_lanes.json

Each fact is edited twice, packed and unpacked, in alternating order (packed first for even
facts), each edit timed end to end and reverted: this machine's speed drifts by tens of percent
between passes, so the two layouts are timed side by side rather than in two runs. The edits'
value changes δ are compared too: packing changes the arithmetic's order, not what is computed.
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

import llm_edit.editing.values as values  # noqa: E402
from llm_edit import edit, load_model, read_requests  # noqa: E402
from llm_edit.core.files import run_info, write_json  # noqa: E402

HERE = Path(__file__).resolve().parent


def timed_edit(model, tok, request, sets, packed: bool):
    """One ROME edit, reverted: (seconds, steps, the dense weight changes)."""
    capacity = values.lane_capacity
    if not packed:
        values.lane_capacity = lambda model: None
    try:
        t0 = time.perf_counter()
        result = edit(model, tok, [request], sets=sets, progress=False)
        seconds = time.perf_counter() - t0
    finally:
        values.lane_capacity = capacity
    result.revert()
    return seconds, result.per_request[0]["steps"], [result.delta.dense(name) for name in result.delta.factors]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--facts", default=str(HERE / "data" / "dev_rewrites.jsonl"))
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    requests = read_requests(args.facts, limit=args.n)
    model, tok = load_model(args.model, device="cpu")
    edit(model, tok, requests[:1], sets=args.sets, progress=False).revert()  # statistics, prefixes, warm-up
    seconds = {True: [], False: []}
    steps = {True: [], False: []}
    gaps = []
    for i, request in enumerate(requests):
        runs = {}
        for packed in ((True, False) if i % 2 == 0 else (False, True)):
            runs[packed] = timed_edit(model, tok, request, args.sets, packed)
            seconds[packed].append(runs[packed][0])
            steps[packed].append(runs[packed][1])
        # ΔW's relative difference between the layouts (float rounding, amplified by the steps)
        a = torch.cat([t.flatten() for t in runs[True][2]])
        b = torch.cat([t.flatten() for t in runs[False][2]])
        gaps.append(float((a - b).norm() / b.norm()))
        print(f"fact {i}: packed {runs[True][0]:.2f} s, unpacked {runs[False][0]:.2f} s, ΔW differs by "
              f"{gaps[-1]:.2e}", flush=True)
    report = {
        "model": args.model, "facts": args.facts, "n_edits": len(requests), "threads": torch.get_num_threads(),
        "lane_tokens": values.lane_capacity(model),
        "packed": {"median_edit_seconds": round(statistics.median(seconds[True]), 2),
                   "edit_seconds": [round(s, 2) for s in seconds[True]], "steps": steps[True]},
        "unpacked": {"median_edit_seconds": round(statistics.median(seconds[False]), 2),
                     "edit_seconds": [round(s, 2) for s in seconds[False]], "steps": steps[False]},
        "median_speedup": round(statistics.median(u / p for p, u in zip(seconds[True], seconds[False])), 3),
        "delta_w_relative_difference": {"median": statistics.median(gaps), "max": max(gaps)},
        "same_steps": steps[True] == steps[False],
        "overrides": args.sets, **run_info(),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        write_json(Path(args.out), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
