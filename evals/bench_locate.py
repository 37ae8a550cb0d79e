"""Benchmark: one causal trace of the default model on a 10-token prompt, and where the time goes.

    python evals/bench_locate.py [--samples 10] [--out evals/results/bench_locate.json]

For each kind (hidden, mlp, attn) the same trace runs twice: the plain way (every restored run
recomputes the whole prompt through every block) and llm-edit's way (restored runs start at
their token on the corrupted prefix's KV cache, and blocks below their lowest restored layer
replay the corrupted outputs). Both are batched (256 sequences per pass); the script checks
that they give the same effects and reports the wall time of each and the share of the
plain method's token-layer work that the fast path skips. For the hidden kind it also times
the reference implementation's schedule (ROME's ``trace_with_patch``: one forward pass per
restored state, its batch being the noise draws).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_edit import load_model  # noqa: E402
from llm_edit.core.arch import num_layers  # noqa: E402
from llm_edit.core.files import run_info, write_json  # noqa: E402
from llm_edit.locating import passes  # noqa: E402
from llm_edit.locating.trace import noise_scale, trace  # noqa: E402

PROMPT, SUBJECT, TARGET = "The Eiffel Tower is located in the city of", "Eiffel Tower", "Paris"


def work(n_tok: int, first: int, n_layers: int, kind: str, window: int, fast: bool) -> int:
    """Token×block evaluations of the restored runs per noise draw (the compute that matters)."""
    step = max(1, math.ceil(n_layers / passes.FLOOR_BUCKETS))
    total = 0
    for k, t in enumerate(range(first, n_tok)):
        start = first + k - k % passes.TOKEN_BUCKET
        for l in range(n_layers):
            floor = l if kind == "hidden" else max(0, l - window // 2)
            floor -= floor % step
            total += ((n_tok - start) * (n_layers - floor)) if fast else n_tok * n_layers
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model, tok = load_model(args.model)
    scale = noise_scale(model, tok)  # cached once per model; not part of a trace's time
    trace(model, tok, PROMPT, SUBJECT, TARGET, kinds=["hidden"], samples=2, positions=["last"], noise=scale)  # warm-up
    rows = {}
    for kind in ("hidden", "mlp", "attn"):
        runs = {}
        for fast in (True, False):
            r = trace(model, tok, PROMPT, SUBJECT, TARGET, kinds=[kind], samples=args.samples, noise=scale,
                      reuse_prefix=fast)
            runs[fast] = r
        diff = (runs[True].indirect_effect(kind) - runs[False].indirect_effect(kind)).abs().max().item()
        r = runs[True]
        n_tok, n_layers = len(r.tokens), num_layers(model)
        w_fast, w_plain = (work(n_tok, r.subject_first, n_layers, kind, r.window, f) for f in (True, False))
        rows[kind] = {"seconds_fast": runs[True].seconds, "seconds_plain": runs[False].seconds,
                      "speedup": round(runs[False].seconds / runs[True].seconds, 2),
                      "work_skipped": round(1 - w_fast / w_plain, 3), "max_abs_difference": diff}
        print(f"{kind:<7} fast {runs[True].seconds:6.1f} s   plain {runs[False].seconds:6.1f} s   "
              f"x{rows[kind]['speedup']:.2f}   token-block work skipped {rows[kind]['work_skipped']:.0%}   "
              f"max |ΔIE| {diff:.1e}")
    rome_style = trace(model, tok, PROMPT, SUBJECT, TARGET, kinds=["hidden"], samples=args.samples, noise=scale,
                       reuse_prefix=False, batch_size=args.samples).seconds
    rows["hidden"]["seconds_one_state_per_pass"] = rome_style
    print(f"hidden, one restored state per forward pass (ROME's schedule): {rome_style:.1f} s")
    total_fast = sum(v["seconds_fast"] for v in rows.values())
    total_plain = sum(v["seconds_plain"] for v in rows.values())
    print(f"all three kinds: fast {total_fast:.1f} s, plain {total_plain:.1f} s "
          f"({len(r.tokens)} tokens, {num_layers(model)} layers, {args.samples} noise draws)")
    if args.out:
        write_json(Path(args.out), {"command": " ".join(sys.argv), "prompt": PROMPT, "tokens": len(r.tokens),
                                    "samples": args.samples, "kinds": rows, "total_fast_seconds": total_fast,
                                    "total_plain_seconds": total_plain, "threads": torch.get_num_threads(),
                                    **run_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
