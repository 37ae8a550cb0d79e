"""How long the full TOFU evaluation of one model takes, and where the time goes.

    python evals/bench_tofu_eval.py [--model llama] [--split forget10] [--rows 40] [--out FILE]

Evaluates ``--model`` on the full-size task (forgetXX_perturbed, retain_perturbed, real authors,
world facts, holdoutXX; every metric; greedy answers capped at ``--max-new-tokens`` = 200 with
stop strings), uncached, and prints wall time split into teacher-forced scoring, generation and
metric computation, with sequences and tokens per second. ``--rows N`` keeps the first N rows
of each split (for a CPU-sized measurement; the full run's rows are printed next to it so the
measured rates can be scaled, and the scaled figure is labelled an estimate).

``--unbatched N`` also times the first N (question, answer) pairs one at a time against the
same pairs batched, to show what batching buys.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from llm_edit import load_model  # noqa: E402
from llm_edit.core.files import write_json  # noqa: E402
from llm_edit.evaluating.tofu import EvalSettings, evaluate_tofu, make_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--split", default="forget10")
    ap.add_argument("--rows", type=int, help="keep the first N rows of every split")
    ap.add_argument("--tofu-data")
    ap.add_argument("--device")
    ap.add_argument("--dtype")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--generation-batch-size", type=int, default=32)
    ap.add_argument("--unbatched", type=int, default=0)
    ap.add_argument("--out")
    args = ap.parse_args()

    full_task = make_task(args.split, None, data=args.tofu_data)
    full_rows = full_task.describe()["rows"]
    task = full_task
    if args.rows:
        for role in ("forget_eval", "retain_eval", "holdout", "real_authors", "world_facts"):
            setattr(task, role, getattr(task, role)[: args.rows])
    model, tok = load_model(args.model, device=args.device, dtype=args.dtype)
    settings = EvalSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            generation_batch_size=args.generation_batch_size)
    t0 = time.perf_counter()
    report = evaluate_tofu(model, tok, task, settings, use_cache=False, name=args.model)
    wall = time.perf_counter() - t0
    t = report["timings"]
    rows = task.describe()["rows"]
    eval_roles = ("forget_eval", "retain_eval", "holdout", "real_authors", "world_facts")
    scale = sum(full_rows[r] for r in eval_roles) / sum(rows[r] for r in eval_roles)
    result = {"model": args.model, "device": str(next(model.parameters()).device), "split": args.split,
              "rows": {r: rows[r] for r in eval_roles}, "full_rows": {r: full_rows[r] for r in eval_roles},
              "wall_s": round(wall, 1), "timings": t,
              "scoring_tokens_per_s": round(t["tokens_scored"] / t["scoring_s"], 1),
              "generation_answers_per_s": round(t["answers_generated"] / t["generation_s"], 2),
              "generated_tokens_per_s": round(t["answer_tokens_generated"] / t["generation_s"], 1),
              "settings": settings.__dict__ | {"stop_strings": list(settings.stop_strings)},
              "aggregates": {k: v for k, v in report["aggregates"].items() if not isinstance(v, dict)}}
    if args.rows:
        result["estimated_full_wall_s"] = round(wall * scale, 0)
        result["estimate_note"] = (f"measured on {sum(rows[r] for r in eval_roles)} of "
                                   f"{sum(full_rows[r] for r in eval_roles)} rows and scaled linearly (x{scale:.1f})")
    if args.unbatched:
        from llm_edit.unlearning.items import ForgetItem, Formatting, answer_ids, question_prefix
        from llm_edit.core.scoring import score_pairs

        fmt = Formatting()
        rows_ = task.forget_eval[: args.unbatched]
        pairs = [(question_prefix(tok, r["question"], fmt), answer_ids(tok, ForgetItem("qa", r["question"], a)))
                 for r in rows_ for a in [r["answer"], r["paraphrased_answer"], *r["perturbed_answer"]]]
        t1 = time.perf_counter()
        score_pairs(model, tok, pairs, batch_size=1)
        one = time.perf_counter() - t1
        t1 = time.perf_counter()
        score_pairs(model, tok, pairs, batch_size=args.batch_size)
        batched = time.perf_counter() - t1
        result["batching"] = {"pairs": len(pairs), "one_at_a_time_s": round(one, 2), "batched_s": round(batched, 2),
                              "speed_up": round(one / batched, 2)}
    print(json.dumps(result, indent=1))
    if args.out:
        write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
