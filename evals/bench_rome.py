"""Benchmark: time of one ROME edit on the default model with cached statistics, and where it goes.

    python evals/bench_rome.py                 # 10 facts from the dev set
    python evals/bench_rome.py --stats-fresh   # also time the statistics from scratch

Each edit is timed end to end (llm_edit.edit: key, value optimisation, solve, apply), after a
warm-up edit that loads the cached statistics and samples the context prefixes. The statistics
computation is reported separately, from its manifest (or measured with --stats-fresh).
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

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--facts", default=str(HERE / "data" / "dev_rewrites.jsonl"))
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--stats-fresh", action="store_true", help="recompute the statistics, timed")
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    requests = read_requests(args.facts, limit=args.n)
    t0 = time.perf_counter()
    model, tok = load_model(args.model, device="cpu")
    load_seconds = time.perf_counter() - t0
    stats_info = None
    if args.stats_fresh:
        from llm_edit.core.models import model_recipe_name
        from llm_edit.core.config import load_config
        from llm_edit.core.arch import arch_of
        from llm_edit.editing.methods import rome
        from llm_edit.editing.stats import second_moment

        config, _ = load_config(rome.ROMEConfig, "rome", model_recipe=model_recipe_name(model), sets=args.sets)
        t0 = time.perf_counter()
        _, stats_info = second_moment(model, tok, arch_of(model).mlp_out.format(config.layer), corpus=config.stats_corpus,
                                      n_tokens=config.stats_tokens, seq_len=config.stats_seq_len,
                                      seed=config.seed, use_cache=False)
        stats_info["measured_seconds"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    warm = edit(model, tok, requests[:1], sets=args.sets, progress=False)
    warm_seconds = time.perf_counter() - t0
    warm.revert()
    stats_info = stats_info or warm.manifest["statistics"]

    totals, parts = [], []
    for request in requests:
        t0 = time.perf_counter()
        result = edit(model, tok, [request], sets=args.sets, progress=False)
        totals.append(time.perf_counter() - t0)
        result.revert()
        parts.append(result.per_request[0])
    median = statistics.median(totals)
    phase = {k: statistics.median(p[k] for p in parts) for k in ("key_seconds", "value_seconds", "solve_seconds")}
    steps = statistics.median(p["steps"] for p in parts)
    report = {
        "model": args.model, "n_edits": len(totals), "threads": torch.get_num_threads(),
        "median_edit_seconds": round(median, 2), "min_edit_seconds": round(min(totals), 2),
        "max_edit_seconds": round(max(totals), 2), "median_phase_seconds": phase,
        "median_value_steps": steps, "median_seconds_per_value_step": round(
            statistics.median(p["value_seconds"] / max(p["steps"] + 1, 1) for p in parts), 3),
        "model_load_seconds": round(load_seconds, 2), "first_edit_seconds_with_warmup": round(warm_seconds, 2),
        "statistics": {k: stats_info.get(k) for k in ("corpus", "n_tokens", "seconds", "measured_seconds")},
        "overrides": args.sets, **run_info(),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        write_json(Path(args.out), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
