"""Forgetting on the development facts: does the model stop saying the object, and nothing else?

    python evals/forget_dev.py --method npo [--set lr=3e-4 ...] [--out evals/results/forget_dev_npo.json]

Protocol (issue 4): 10 facts the default model knows (``evals/data/forget_dev.jsonl``, 2
paraphrases each) are unlearned through ``llm_edit.forget`` (the same code as ``llm-edit
forget``). Reported, before and after:

* forget prompts / paraphrases: share whose greedy continuation no longer starts with the object;
* retain set (``--retain``): 69 other facts the model knows, from ROME's known facts
  (``evals/data/retain_dev.jsonl``, disjoint in subject and object from both sets here);
* 30 unrelated known facts (``evals/data/unrelated_dev.jsonl``): share still answered correctly;
* perplexity on ``llm_edit/data/generic_text.txt`` (held-out, human-written prose);
* wall time of the unlearning.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from llm_edit import forget, load_model  # noqa: E402
from llm_edit.unlearning.items import Formatting, read_items  # noqa: E402
from llm_edit.core.files import write_json  # noqa: E402
from llm_edit.evaluating.metrics import greedy_answers, perplexity, says  # noqa: E402


def measure(model, tok, forget_items, unrelated, text) -> dict:
    fmt = Formatting()
    prompts = greedy_answers(model, tok, forget_items, fmt, max_new_tokens=6)
    para_items = [x for x in forget_items for _ in x.paraphrases]
    para_prompts = [p for x in forget_items for p in x.paraphrases]
    paras = greedy_answers(model, tok, para_items, fmt, prompts=para_prompts, max_new_tokens=6)
    kept = greedy_answers(model, tok, unrelated, fmt, max_new_tokens=6)
    return {
        "forget_prompt_forgotten": sum(not says(a, x.answer) for a, x in zip(prompts, forget_items)) / len(prompts),
        "paraphrase_forgotten": sum(not says(a, x.answer) for a, x in zip(paras, para_items)) / len(paras),
        "unrelated_correct": sum(says(a, x.answer) for a, x in zip(kept, unrelated)) / len(kept),
        "perplexity": perplexity(model, tok, text),
        "answers": {"forget": prompts, "paraphrases": paras, "unrelated": kept},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--method", default="npo")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--retain", default=str(HERE / "data" / "retain_dev.jsonl"),
                    help="retain items ('none': the default, text sampled from the model)")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.manual_seed(0)
    forget_items = read_items(HERE / "data" / "forget_dev.jsonl")
    unrelated = read_items(HERE / "data" / "unrelated_dev.jsonl")
    text = (HERE.parent / "llm_edit" / "data" / "generic_text.txt").read_text()
    model, tok = load_model(args.model)
    before = measure(model, tok, forget_items, unrelated, text)
    t0 = time.perf_counter()
    retain = None if args.retain == "none" else read_items(args.retain)
    result = forget(model, tok, forget_items, retain, method=args.method, sets=args.sets)
    seconds = time.perf_counter() - t0
    after = measure(result.model, tok, forget_items, unrelated, text)
    rise = after["perplexity"] / before["perplexity"] - 1
    summary = {k: after[k] for k in ("forget_prompt_forgotten", "paraphrase_forgotten", "unrelated_correct")}
    summary.update(perplexity_before=before["perplexity"], perplexity_after=after["perplexity"],
                   perplexity_rise=rise, unlearning_seconds=round(seconds, 1), steps=len(result.log))
    print(json.dumps(summary, indent=2))
    if args.out:
        write_json(Path(args.out), {"command": " ".join(sys.argv), "method": args.method, "summary": summary,
                                    "before": before, "after": after, "manifest": result.manifest})


if __name__ == "__main__":
    main()
