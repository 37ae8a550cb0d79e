"""How long ``llm-edit audit`` takes for one 135M model on 40 forget items, and where the time goes.

    python evals/bench_audit.py [--items 40] [--out evals/results/bench_audit.json]

The models are the CPU-sized TOFU protocol's (10 authors; built and cached by ``llm-edit tofu``
or ``evals/audit_tofu.py`` if missing): the audited model is the retain model, the original the
fine-tuned one, and the forget items the last ``--items`` rows of the 10 authors (two authors,
with TOFU's paraphrased questions), so every probe has something to find. What is timed is the
audit alone (the same call as ``llm-edit audit`` without ``--retain-ref``): both models through
every probe, both relearning attacks, both quantization levels and the utility guard; the
per-probe times come from the audit's own report.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from llm_edit.audit import audit  # noqa: E402
from llm_edit.forget_data import parse_item  # noqa: E402
from llm_edit.io import write_json  # noqa: E402
from llm_edit.tofu import make_task  # noqa: E402
from llm_edit.tofu_protocol import finetuned_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--tofu-data")
    ap.add_argument("--out")
    args = ap.parse_args()
    task = make_task("forget10", 10, data=args.tofu_data)
    original, tok, _ = finetuned_model(args.model, task.train, "finetuned")
    audited, _, _ = finetuned_model(args.model, task.retain_train, "retain")
    from llm_edit.tofu import load_split

    perturbed = load_split("retain_perturbed", args.tofu_data)[: len(task.train)]
    items = [parse_item(r) for r in perturbed[-args.items:]]
    retain = [parse_item({"question": r["question"], "answer": r["answer"]}) for r in task.train[:40]]
    holdout = [parse_item(r) for r in task.holdout]
    t0 = time.perf_counter()
    report = audit(audited, original, tok, items, retain_items=retain, holdout_items=holdout)
    wall = time.perf_counter() - t0
    result = {"items": len(items), "models_audited": ["audited", "original"], "wall_s": round(wall, 1),
              "timings_s": report["timings"], "verdict": report["verdict"]}
    print(json.dumps(result, indent=1))
    if args.out:
        write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
