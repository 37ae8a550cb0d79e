"""Which single erasure flips a judged fact (a diagnostic of issue 20's tuning set; nothing is chosen by it).

Each of the 32 tuning facts (evals/data/forget_tune.jsonl) is erased *alone* from the original model with the
default `llm-edit forget` (memit-erase, the llama recipe), and every neighbour and unrelated fact the original
model answers (neighbours_tune, unrelated_tune) is asked again (greedy, 16 new tokens, answered = the object
appears); the erasure is then reverted bit for bit. Each line printed names the erasure and the facts it flipped,
with True where the recipe's 32-fact run (holds/tune_form_keys_base) lost that fact too. A fact flipped by many
erasures that share nothing with it is a fragile greedy answer, not a casualty of its neighbour being forgotten.

    LLM_EDIT_HOME=... python evals/erase_single_flips.py > evals/results/holds/tune_single_flips.log

(Run 2026-12-07 from the repository root, alone, about 21 min on 2 cores, as a script with the same statements at
module level, tidied into ``main`` before it was committed; paths are the tuning set's.)
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llm_edit  # noqa: E402
from llm_edit import load_model  # noqa: E402
from llm_edit.core.text import mentions  # noqa: E402
from llm_edit.evaluating.metrics import greedy  # noqa: E402


def main() -> None:
    model, tok = load_model("llama")
    facts = [json.loads(line) for line in open("evals/data/forget_tune.jsonl")]
    base = json.load(open("evals/results/holds/tune_form_keys_base/holds.json"))
    lost = {x["prompt"] for n in ("neighbours", "unrelated") for x, y in zip(base["before"][n], base["after"][n])
            if x["answered"] and not y["answered"]}
    watch = [(x["prompt"], x["object"]) for n in ("neighbours", "unrelated") for x in base["before"][n]
             if x["answered"]]
    print(len(lost), "lost;", len(watch), "watched", flush=True)

    def answered() -> dict[str, bool]:
        return {p: mentions(greedy(model, tok, p, max_new_tokens=16), o) for p, o in watch}

    before = answered()
    for i, fact in enumerate(facts):
        result = llm_edit.forget(model, tok, [fact], progress=False)
        now = answered()
        flipped = [p for p in now if before[p] and not now[p]]
        result.delta.revert(model)
        print(i, fact["subject"][:30], fact["target"], "| flips:", [(p[:45], p in lost) for p in flipped], flush=True)


if __name__ == "__main__":
    main()
