"""Keep the edit requests a model really knows: the greedy continuation (16 tokens) of the
request's own prompt mentions its true object. Neighbourhood prompts are kept only where the
model answers them too, so that specificity measures what an edit breaks, not what the model
never knew. Used to build a model's development and held-out rewrite sets.

    python evals/known_rewrites.py --model gemma --facts evals/data/dev_rewrites.jsonl \
        --out evals/data/gemma/dev_rewrites.jsonl
    python evals/known_rewrites.py --model gemma --limit 100 --skip 0 \
        --facts ../shared/data/counterfact/counterfact-val.json --out evals/data/gemma/counterfact_known100.jsonl

``--limit`` stops after that many known requests, in file order (``--skip`` known ones first,
``--offset`` requests first): disjoint slices of one file make a tuning and a held-out set.

``--relations``: EasyEdit's flat CounterFact drops ROME's ``relation_id``; both CounterFact and
ROME's known facts take their prompts from ParaRel's per-relation templates, so a record whose
prompt template is a known fact's template gets that fact's relation id (about 68% of records),
which gives it a question form (``core.forms``); records without one are then left out.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_edit import load_model, read_requests  # noqa: E402
from llm_edit.core.files import atomic_write_text  # noqa: E402
from llm_edit.core.scoring import generate  # noqa: E402
from llm_edit.core.text import mentions  # noqa: E402


def with_relation_ids(requests):
    from dataclasses import replace

    from llm_edit.core.files import DATA_DIR

    knowns = json.loads((DATA_DIR / "known_1000.json").read_text())
    relation_of = {k["template"]: k["relation_id"] for k in knowns}
    return [replace(r, relation_id=relation_of[r.prompt]) for r in requests if r.prompt in relation_of]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--facts", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--skip", type=int, default=0, help="known requests to pass over first")
    ap.add_argument("--scan", type=int, default=600, help="look at most at this many requests")
    ap.add_argument("--offset", type=int, default=0, help="start at this request of the file (0-based)")
    ap.add_argument("--relations", action="store_true",
                    help="give each request the relation id of the known fact with its prompt template; keep "
                         "only requests that get one")
    args = ap.parse_args()
    requests = read_requests(args.facts, limit=args.offset + args.scan)[args.offset:]
    if args.relations:
        requests = with_relation_ids(requests)
    model, tok = load_model(args.model)
    prompts = [r.text for r in requests]
    hood = [(i, n) for i, r in enumerate(requests) for n in r.neighborhood]
    texts = generate(model, tok, [tok(p)["input_ids"] for p in prompts + [n.prompt for _, n in hood]],
                     max_new_tokens=16, batch_size=64, progress=True, desc="asking the model")
    known_hood: dict[int, list] = {}
    for (i, n), text in zip(hood, texts[len(prompts):]):
        if mentions(text, n.target):
            known_hood.setdefault(i, []).append({"prompt": n.prompt, "target": n.target})
    kept, skipped = [], 0
    for i, (r, text) in enumerate(zip(requests, texts)):
        if not mentions(text, r.target_true):
            continue
        if skipped < args.skip:
            skipped += 1
            continue
        row = {k: v for k, v in asdict(r).items() if v not in (None, (), [])}
        row["paraphrase_prompts"] = list(r.paraphrase_prompts)
        row["neighborhood"] = known_hood.get(i, [])
        kept.append(row)
        if args.limit and len(kept) >= args.limit:
            break
    atomic_write_text(Path(args.out), "".join(json.dumps(k) + "\n" for k in kept))
    print(f"{len(kept)} known of requests {args.offset}-{args.offset + i} ({args.skip} known skipped); "
          f"{sum(len(k['neighborhood']) for k in kept)} neighbourhood prompts kept -> {args.out}")


if __name__ == "__main__":
    main()
