"""How the key statistics C = E[kkᵀ] change with the corpus and the token count.

For one module, C is computed from ``--corpus`` at each token count of ``--tokens`` and compared
with a reference C (``--ref-corpus`` at ``--ref-tokens``): the relative Frobenius error
||C - C_ref|| / ||C_ref||, the relative error of ROME's direction C⁻¹k for keys drawn from the
reference corpus's own keys (what the edit actually uses), and the time the computation took
(cold: the cache is bypassed, so nothing else may run beside it).

    python evals/stats_tokens.py --tokens 5000,10000,20000,50000 --out evals/results/stats_tokens.json
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from llm_edit import load_model
from llm_edit.core.arch import arch_of
from llm_edit.core.files import run_info, write_json
from llm_edit.editing.stats import second_moment


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--layer", type=int, default=4)
    ap.add_argument("--corpus", default="shipped")
    ap.add_argument("--tokens", default="5000,10000,20000,50000")
    ap.add_argument("--ref-corpus", default="model-samples")
    ap.add_argument("--ref-tokens", type=int, default=50_000)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    model, tok = load_model(args.model)
    module = arch_of(model).mlp_out.format(args.layer)
    ref, ref_manifest = second_moment(model, tok, module, corpus=args.ref_corpus, n_tokens=args.ref_tokens,
                                      seq_len=args.seq_len)  # cached: it is today's default
    ref = ref.double()
    # probe directions: the reference's top eigenvectors mixed at random stand in for real keys
    g = torch.Generator().manual_seed(0)
    evals, evecs = torch.linalg.eigh(ref)
    keys = (evecs[:, -64:] * evals[-64:].sqrt()) @ torch.randn(64, 32, generator=g, dtype=torch.float64)
    ref_dirs = torch.linalg.solve(ref, keys)
    rows = []
    for n in [int(x) for x in args.tokens.split(",")]:
        t0 = time.perf_counter()
        c, manifest = second_moment(model, tok, module, corpus=args.corpus, n_tokens=n, seq_len=args.seq_len,
                                    use_cache=False)
        seconds = time.perf_counter() - t0
        c = c.double()
        dirs = torch.linalg.solve(c, keys)
        row = {"corpus": args.corpus, "tokens": manifest["n_tokens"], "seconds": round(seconds, 1),
               "rel_frobenius_error": float((c - ref).norm() / ref.norm()),
               "rel_direction_error": float(((dirs - ref_dirs).norm(dim=0) / ref_dirs.norm(dim=0)).median()),
               "trace_ratio": float(c.trace() / ref.trace())}
        rows.append(row)
        print(row, flush=True)
    write_json(args.out, {"module": module, "reference": {"corpus": args.ref_corpus, "tokens": ref_manifest["n_tokens"]},
                          "rows": rows, "command": sys.argv, **run_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
