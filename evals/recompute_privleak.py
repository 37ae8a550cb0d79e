"""Recompute PrivLeak in stored TOFU reports and audits from their stored membership AUCs.

PrivLeak's definition changed to open-unlearning's (its sign was the opposite, its value
another): the AUCs it is computed from did not, so stored results are corrected without
running a model. TOFU protocol reports (``report.json`` with ``rows``) get every model's
``privleak`` re-attached against the retain row and their ``report.md`` table rewritten;
audits (``audit.json``) get the Min-K%++ row's note rewritten in ``audit.json`` and
``audit.md``.

    python evals/recompute_privleak.py evals/results/tofu_cpu evals/results/audit_tofu_npo ...
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from llm_edit.evaluating import tofu_metrics as M
from llm_edit.core.files import atomic_write_text, write_json
from llm_edit.evaluating.report import tofu_table
from llm_edit.evaluating.tofu import privleak_record

_OLD_NOTE = re.compile(r"PrivLeak vs retain: -?[0-9.]+")


def fix_protocol_report(folder: Path) -> list[str]:
    report = json.loads((folder / "report.json").read_text())
    rows = report["rows"]
    ref = rows["retain"]["aggregates"]["mia_auc"]
    for row in rows.values():
        if row["aggregates"].get("privleak", {}).get("status") == "ok":
            row["aggregates"]["privleak"] = privleak_record(row["aggregates"]["mia_auc"], ref)
        row["conventions"] = M.CONVENTIONS
    md = (folder / "report.md").read_text()
    table = re.compile(r"^\| model \|.*?(?=\n\n)", re.S | re.M)
    if not table.search(md):
        raise SystemExit(f"{folder / 'report.md'}: no table to replace")
    md = table.sub(lambda _: tofu_table(rows), md, count=1)
    md = re.sub(r"^- privleak: .*$", lambda _: f"- privleak: {M.CONVENTIONS['privleak']}", md, flags=re.M)
    write_json(folder / "report.json", report)
    atomic_write_text(folder / "report.md", md)
    return [f"{folder.name}/{name}: Min-K% {row['aggregates']['privleak']['value']:.1f}, "
            f"Min-K%++ {row['aggregates']['privleak']['min_k_plus_plus']:.1f}"
            for name, row in rows.items() if row["aggregates"].get("privleak", {}).get("status") == "ok"]


def fix_audit(folder: Path) -> list[str]:
    text = (folder / "audit.json").read_text()
    audit = json.loads(text)
    row = next(r for r in audit["table"] if r["probe"] == "mia_min_k_plus_plus")
    if row.get("retain") is None:
        return []
    value = M.privleak(row["unlearned"], row["retain"])
    note = f"PrivLeak (Min-K%++, open-unlearning's sign: < 0 still looks trained on) vs retain: {value:.1f}"
    atomic_write_text(folder / "audit.json", _OLD_NOTE.sub(note, text))
    atomic_write_text(folder / "audit.md", _OLD_NOTE.sub(note, (folder / "audit.md").read_text()))
    return [f"{folder.name}: Min-K%++ {value:.1f}"]


def main(argv: list[str]) -> int:
    for arg in argv:
        folder = Path(arg)
        lines = fix_protocol_report(folder) if (folder / "report.md").exists() else fix_audit(folder)
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
