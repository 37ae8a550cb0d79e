"""Write ``llm_edit/data/stats_corpus.jsonl``: the text the ``shipped`` statistics corpus reads.

It is the default model's own samples, exactly those ``stats_corpus: model-samples`` draws
(SmolLM2-135M-Instruct, seed 0, 448 sequences of up to 128 tokens, ancestral sampling from
one-word starts), decoded to text exactly (special tokens dropped), one JSON line a sample. Sampling them takes about ten
minutes on 2 CPU cores; reading them back takes one forward pass, which is why they ship.

    python evals/make_stats_corpus.py            # uses the samples cache if it is there
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys

from llm_edit import load_model
from llm_edit.core.files import atomic_write_text
from llm_edit.editing.stats import SHIPPED_CORPUS, model_samples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--tokens", type=int, default=50_000)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(SHIPPED_CORPUS))
    args = ap.parse_args(argv)
    model, tok = load_model(args.model)
    lines = [json.dumps({"text": tok.decode(ids, skip_special_tokens=True)})  # ASCII escapes: no raw U+2028 for splitlines() to cut
             for ids in model_samples(model, tok, args.tokens, args.seq_len, args.seed)]
    body = "\n".join(lines) + "\n"
    atomic_write_text(args.out, body)
    print(f"{args.out}: {len(lines)} samples, {len(body):,} characters, sha256 "
          f"{hashlib.sha256(body.encode()).hexdigest()[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
