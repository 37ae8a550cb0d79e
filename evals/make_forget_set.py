"""The second, larger forget set of issue 20: facts the default model knows over 12 relations, two
hand-written paraphrases each, and 50 unrelated known facts (disjoint in subject and object).
Written once and then left alone: nothing is tuned on it.

    python evals/make_forget_set.py --out-facts evals/data/forget_heldout.jsonl \
        --out-unrelated evals/data/unrelated_heldout.jsonl

Facts come from ROME's known facts (their subjects and objects), each asked through one prompt
per relation written here (``PROMPTS``), or else through ROME's own prompt, and kept when the
model's greedy continuation (16 tokens) mentions the object; at most ``--per-relation`` per
relation. Paraphrases are
two more templates per relation written here (never MQuAKE's, which training may use).
Unrelated facts: other known facts the model answers with their own prompt, sharing neither
subject nor object with a forget fact (as the development set's).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from llm_edit import load_model  # noqa: E402
from llm_edit.core.files import atomic_write_text  # noqa: E402
from llm_edit.core.scoring import generate  # noqa: E402
from llm_edit.core.text import mentions  # noqa: E402
from llm_edit.core.known import KNOWN_FACTS, known_pool  # noqa: E402

# relation: (prompt, paraphrase, paraphrase)
PROMPTS = {
    "P17": ("{} is located in the country of", "{} can be found in the country of", "The country where {} is located is"),
    "P36": ("The capital of {} is", "The capital city of {} is", "{}'s capital city is"),
    "P37": ("The official language of {} is", "The language officially used in {} is", "In {}, the official language is"),
    "P30": ("{} is located in the continent of", "{} lies on the continent of", "The continent where {} lies is"),
    "P176": ("{} is produced by", "{} is manufactured by", "The maker of {} is"),
    "P103": ("The native language of {} is", "The mother tongue of {} is", "{}'s first language is"),
    "P27": ("{} is a citizen of", "{} holds citizenship of", "{} is a national of"),
    "P159": ("The headquarters of {} is in", "{} has its headquarters in", "The main office of {} is in"),
    "P127": ("{} is owned by", "The owner of {} is", "{} belongs to"),
    "P641": ("{} professionally plays the sport of", "{} is a professional player of", "The sport {} plays professionally is"),
    "P449": ("{} premieres on", "{} was first broadcast on", "The network that aired {} is"),
    "P140": ("{} is affiliated with the religion of", "{} follows the religion of", "The religion of {} is"),
    "P20": ("{} died in the city of", "{} passed away in the city of", "The city where {} died is"),
    "P19": ("{} was born in the city of", "The birthplace of {} is the city of", "{} is a native of the city of"),
    "P108": ("{} is employed by", "{} works for", "The employer of {} is"),
    "P178": ("{} is developed by", "{} was created by the company", "The developer of {} is"),
    "P937": ("{} worked in the city of", "The city where {} worked is", "{} spent a working life in the city of"),
    "P495": ("{} was created in the country of", "{} comes from the country of", "The country of origin of {} is"),
    "P364": ("The original language of {} is", "{} was originally made in the language", "The language {} was first made in is"),
    "P407": ("{} is written in the language", "The language of {} is", "{} was published in the language"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--per-relation", type=int, default=4)
    ap.add_argument("--unrelated", type=int, default=50)
    ap.add_argument("--exclude", action="append", default=[], help="fact files whose subjects to avoid")
    ap.add_argument("--unrelated-pool", choices=["all", "eval"], default="all",
                    help="draw unrelated facts from all known facts (how the shipped sets were made; protect_neighbours "
                         "may then protect a few, which forget_holds.py reports as leaks) or only from the evaluation "
                         "half (core.known.known_pool), which nothing protects")
    ap.add_argument("--out-facts", required=True)
    ap.add_argument("--out-unrelated", required=True)
    args = ap.parse_args()
    known = json.loads(Path(KNOWN_FACTS).read_text())
    avoid = set()
    for f in args.exclude:
        for line in Path(f).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                avoid.add(r["subject"].lower())
    model, tok = load_model(args.model)
    candidates = [k for k in known if k["relation_id"] in PROMPTS and k["subject"].lower() not in avoid]
    mine = [PROMPTS[k["relation_id"]][0].replace("{}", k["subject"]) for k in candidates]
    texts = generate(model, tok, [list(tok(p)["input_ids"]) for p in mine + [k["prompt"] for k in candidates]],
                     max_new_tokens=16, batch_size=64, progress=True, desc="checking facts")
    taken: dict[str, int] = {}
    facts, used = [], set()
    for k, text_mine, text_rome in zip(candidates, texts[:len(candidates)], texts[len(candidates):]):
        r = k["relation_id"]
        prompt, *paraphrases = PROMPTS[r]
        if mentions(text_mine, k["attribute"]):
            template = prompt
        elif mentions(text_rome, k["attribute"]) and k["subject"] in k["prompt"]:
            template = k["prompt"].replace(k["subject"], "{}", 1)
        else:
            continue
        if taken.get(r, 0) < args.per_relation and k["subject"].lower() not in used:
            taken[r] = taken.get(r, 0) + 1
            used.add(k["subject"].lower())
            facts.append({"prompt": template, "subject": k["subject"], "target": k["attribute"], "relation_id": r,
                          "paraphrase_prompts": [p.replace("{}", k["subject"]) for p in paraphrases]})
    objects = {f["target"].lower() for f in facts}
    others = [k for k in known if k["subject"].lower() not in used | avoid
              and k["attribute"].lower() not in objects and k["subject"] in k["prompt"]
              and (args.unrelated_pool == "all" or known_pool(k["subject"]) == "eval")]
    texts = generate(model, tok, [list(tok(k["prompt"])["input_ids"]) for k in others], max_new_tokens=16, batch_size=64,
                     progress=True, desc="checking unrelated facts")
    unrelated, subjects = [], set()
    for k, text in zip(others, texts):
        if mentions(text, k["attribute"]) and len(unrelated) < args.unrelated and k["subject"].lower() not in subjects:
            subjects.add(k["subject"].lower())
            unrelated.append({"prompt": k["prompt"].replace(k["subject"], "{}", 1), "subject": k["subject"],
                              "target": k["attribute"], "relation_id": k["relation_id"]})
    atomic_write_text(Path(args.out_facts), "".join(json.dumps(f) + "\n" for f in facts))
    atomic_write_text(Path(args.out_unrelated), "".join(json.dumps(f) + "\n" for f in unrelated))
    print(f"{len(facts)} facts over {len(taken)} relations {dict(taken)} -> {args.out_facts}")
    print(f"{len(unrelated)} unrelated facts over {len({u['relation_id'] for u in unrelated})} relations "
          f"-> {args.out_unrelated}")


if __name__ == "__main__":
    main()
