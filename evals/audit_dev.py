"""Audit unlearning of the development facts: what survives each probe and attack.

    python evals/audit_dev.py --method rome-erase [--set KEY=VALUE ...] [--out evals/results/audit_dev_rome-erase]

The issue-4 protocol's data: the 10 known facts of ``evals/data/forget_dev.jsonl`` (2
paraphrases each) are unlearned from the default model with ``--method`` (any unlearner, with
``evals/data/retain_dev.jsonl`` as its retain set, or an erasure by edits), then audited against
the original model; retain items for in-context examples, benign relearning and the utility
guard are the 30 unrelated known facts of ``evals/data/unrelated_dev.jsonl``. No holdout: the
original model knows every fact, so membership inference has no unseen set to compare with.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from llm_edit import forget, load_model  # noqa: E402
from llm_edit.auditing.audit import AuditConfig, audit, write_audit  # noqa: E402
from llm_edit.core.config import build_config, parse_set  # noqa: E402
from llm_edit.unlearning.items import read_items  # noqa: E402
from llm_edit.core.files import atomic_directory  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--method", default="npo")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--audit-set", dest="audit_sets", action="append", default=[])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    data = HERE / "data"
    forget_items = read_items(data / "forget_dev.jsonl")
    unrelated = read_items(data / "unrelated_dev.jsonl")
    config = build_config(AuditConfig, parse_set(args.audit_sets), "--audit-set") if args.audit_sets else AuditConfig()
    original, tok = load_model(args.model)
    model, _ = load_model(args.model)
    t0 = time.perf_counter()
    result = forget(model, tok, forget_items, read_items(data / "retain_dev.jsonl"), args.method, sets=args.sets)
    unlearn_s = time.perf_counter() - t0
    unlearned = result.merge()
    t1 = time.perf_counter()
    report = audit(unlearned, original, tok, forget_items, retain_items=unrelated, config=config)
    report.update({"model": f"{args.model} unlearned with {args.method}", "method": args.method, "sets": args.sets,
                   "unlearn_s": round(unlearn_s, 1), "audit_s": round(time.perf_counter() - t1, 1)})
    with atomic_directory(Path(args.out), overwrite=True) as out:
        write_audit(out, report, f"Audit: {args.method} on the development facts")
    print(Path(args.out, "audit.md").read_text().split("\n## How to read")[0])
    print(f"audit {report['audit_s']} s, unlearning {report['unlearn_s']} s")


if __name__ == "__main__":
    main()
