"""``llm-edit audit``."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import add_model_args, check_items_fit, check_out, load

HELP = "probe an unlearned model: what survives paraphrases, attacks, relearning, quantization"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--original", required=True, help="the model before unlearning (alias, hub id or directory)")
    p.add_argument("--facts", required=True, help="the forget items (facts or question/answer pairs)")
    p.add_argument("--retain", help="retain items: in-context examples, benign relearning, the utility guard")
    p.add_argument("--holdout", help="items never trained on, for membership inference")
    p.add_argument("--retain-ref", help="the retain model (directory or alias), or its TOFU report.json (PrivLeak only)")
    p.add_argument("--limit", type=int, help="only the first N forget items")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="audit setting (thresholds, budgets; see llm_edit.auditing.audit.AuditConfig)")
    p.add_argument("--out", required=True, help="output directory: audit.json, audit.md, recovery.png")
    p.add_argument("--overwrite", action="store_true")


def run(args) -> int:
    from ..auditing.audit import AuditConfig, audit, audit_summary, write_audit
    from ..core.config import build_config, parse_set
    from ..core.files import atomic_directory
    from ..core.models import load_model
    from ..evaluating.tofu import read_reference
    from ..unlearning.items import numbered_items

    numbered = {"facts": numbered_items(args.facts, limit=args.limit)}  # every input is checked before loading models
    for name in ("retain", "holdout"):
        if getattr(args, name):
            numbered[name] = numbered_items(getattr(args, name))
    forget_items = [x for _, x in numbered["facts"]]
    retain_items = [x for _, x in numbered["retain"]] if "retain" in numbered else None
    holdout_items = [x for _, x in numbered["holdout"]] if "holdout" in numbered else None
    config = build_config(AuditConfig, parse_set(args.sets), "--set") if args.sets else AuditConfig()
    retain_report = None
    if args.retain_ref and args.retain_ref.endswith(".json"):
        retain_report = read_reference(args.retain_ref)
    check_out(args)
    model, tok = load(args)
    for name, rows in numbered.items():
        check_items_fit(model, tok, getattr(args, name), rows)
    original, _ = load_model(args.original, dtype=args.dtype, device=args.device,
                             trust_remote_code=args.trust_remote_code)
    retain_model = None
    if args.retain_ref and retain_report is None:
        retain_model, _ = load_model(args.retain_ref, dtype=args.dtype, device=args.device,
                                     trust_remote_code=args.trust_remote_code)
    t0 = time.perf_counter()
    report = audit(model, original, tok, forget_items, retain_items=retain_items, holdout_items=holdout_items,
                   retain_model=retain_model, retain_report=retain_report, config=config)
    report.update({"model": args.model, "original": args.original, "retain_ref": args.retain_ref,
                   "facts": str(args.facts), "seconds": round(time.perf_counter() - t0, 1)})
    with atomic_directory(Path(args.out), overwrite=args.overwrite) as out:
        write_audit(out, report, f"Audit of {args.model} on {Path(args.facts).name}")
    print(audit_summary(report, f"Audit of {args.model} on {Path(args.facts).name}"))
    print(f"audit in {report['seconds']:.0f} s -> {args.out}")
    return 0
