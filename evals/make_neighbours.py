"""Neighbour facts for a forget set: known facts the model answers that share a forgotten fact's
object or relation, from the *evaluation* half of the shipped known facts (``core.known.known_pool``),
so unlearning's protective retain set (the training half) never holds one. Made once per set,
then left alone: they judge forgetting and choose nothing.

    python evals/make_neighbours.py --facts evals/data/forget_dev.jsonl \
        --exclude evals/data/unrelated_dev.jsonl --out evals/data/neighbours_dev.jsonl
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from llm_edit import load_model  # noqa: E402
from llm_edit.core.files import atomic_write_text  # noqa: E402
from llm_edit.core.scoring import generate  # noqa: E402
from llm_edit.core.text import mentions  # noqa: E402
from llm_edit.unlearning.items import neighbour_facts, read_items  # noqa: E402


def main() -> None:
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--facts", required=True)
    ap.add_argument("--exclude", action="append", default=[], help="fact files whose subjects may not be used")
    ap.add_argument("--written", help="neighbours written by hand (facts), checked the same way, for forgotten "
                    "facts the known facts cover with fewer than --per-fact")
    ap.add_argument("--per-fact", type=int, default=3)
    ap.add_argument("--pool", choices=["eval", "all"], default="eval",
                    help="all: both halves of the known facts (only for judging methods that train on no known "
                    "fact, e.g. the erasers; evals/forget_holds.py reports any overlap with what was trained)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    facts = read_items(args.facts)
    banned = {x.extra.get("subject", "").lower() for f in args.exclude for x in read_items(f)}
    # every known fact of the evaluation half that shares a forgotten fact's object or relation
    candidates = [c for c in neighbour_facts(facts, per_item=10_000,
                                                  pool=None if args.pool == "all" else "eval")
                  if c.extra["subject"].lower() not in banned]
    if args.written:
        for x in read_items(args.written):
            if x.extra["subject"].lower() in banned:
                continue
            same_object = [f for f in facts if f.answer.lower() == x.answer.lower()]
            same_relation = [f for f in facts if f.prompt.replace(f.extra["subject"], "{}")
                             == x.prompt.replace(x.extra["subject"], "{}")]
            owner = next((f.extra["subject"] for f in same_object + same_relation), None)
            if owner is not None:
                candidates.append(type(x)("fact", x.prompt, x.answer, (), {"subject": x.extra["subject"],
                                                                         "neighbour_of": owner}))
    model, tok = load_model(args.model)
    texts = generate(model, tok, [list(tok(c.prompt)["input_ids"]) for c in candidates], max_new_tokens=16, batch_size=64)
    taken: dict[str, int] = {}
    lines = []

    def shares(c, f) -> bool:
        tail = f.prompt.replace(f.extra["subject"], "{}", 1)
        return (c.answer.lower() == f.answer.lower() or (c.extra.get("relation_id") or 0) == f.extra.get("relation_id")
                or c.prompt.replace(c.extra["subject"], "{}", 1) == tail)

    for c, text in zip(candidates, texts):
        if not mentions(text, c.answer):
            continue
        # to the forgotten fact it is closest to (the object first) that has the fewest so far
        owners = sorted((f for f in facts if shares(c, f)), key=lambda f: (c.answer.lower() != f.answer.lower(),
                                                                         taken.get(f.extra["subject"], 0)))
        owner = next((f.extra["subject"] for f in owners if taken.get(f.extra["subject"], 0) < args.per_fact), None)
        if owner is not None:
            taken[owner] = taken.get(owner, 0) + 1
            lines.append(json.dumps({"prompt": c.prompt.replace(c.extra["subject"], "{}", 1),
                                     "subject": c.extra["subject"], "target": c.answer,
                                     "relation_id": c.extra.get("relation_id")}))
    atomic_write_text(Path(args.out), "\n".join(lines) + "\n")
    for x in facts:
        print(f"{x.extra.get('subject')}: {taken.get(x.extra.get('subject'), 0)} neighbours")
    print(f"{len(lines)} neighbours -> {args.out}")


if __name__ == "__main__":
    main()
