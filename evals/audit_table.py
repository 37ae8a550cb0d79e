"""One table of every probe × method from several audits against the same original.

    python evals/audit_table.py --title "CPU-sized TOFU" --out evals/results/audit_tofu.md \
        evals/results/audit_tofu_grad_diff evals/results/audit_tofu_npo ...

Rows: the original model, the retain model (when the audits had one), then each audited model.
Cells: the probe's number (answered share, share of forgotten items that return, AUC or
extraction strength) and, for audited models, the verdict's initial (F forgotten, P partly,
N not forgotten). The original and retain rows are taken from the first audit and checked to
be the same in every other one (they are cached by the audit, so they must be). Audits by
``audit_tofu.py`` that carry TOFU's figures add forget quality and model utility columns.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_edit.core.files import atomic_write_text  # noqa: E402

MARK = {"forgotten": "F", "partly": "P", "not forgotten": "N", "n/a": "–"}


def fmt(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("audits", nargs="+", help="audit output folders (each with audit.json)")
    ap.add_argument("--title", required=True)
    ap.add_argument("--out", required=True, help="markdown file to write")
    args = ap.parse_args()
    reports = {Path(a).name: json.loads((Path(a) / "audit.json").read_text()) for a in args.audits}
    first = next(iter(reports.values()))
    probes = [t["probe"] for t in first["table"]]
    for name, r in reports.items():
        if [t["probe"] for t in r["table"]] != probes:
            sys.exit(f"{name}: its probes differ from the first audit's")
        for t, t0 in zip(r["table"], first["table"]):
            if (t["original"], t["retain"]) != (t0["original"], t0["retain"]) and not t["probe"].startswith("quantized"):
                print(f"note: {name}: {t['probe']} original/retain differ from the first audit's", file=sys.stderr)
    tofu = all("tofu" in r for r in reports.values())
    head = ["model"] + probes + ["perplexity", "retain answered", "utility"] + (
        ["forget quality", "model utility"] if tofu else [])

    def tofu_cells(row) -> str:  # forget quality to 3 significant digits: 0.097 is not 0.10
        return f" {row['forget_quality']:.3g} | {row['model_utility']:.3f} |" if tofu else ""
    lines = [f"# Audit: {args.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def ref_row(label, key):
        u = first["utility"].get(key) or {}
        cells = [fmt(t[key]) for t in first["table"]]
        return (f"| {label} | " + " | ".join(cells) + f" | {fmt(u.get('perplexity'))} | {fmt(u.get('retain_answered'))} | |"
                + (tofu_cells(first["tofu"][key]) if tofu else ""))

    lines.append(ref_row("original", "original"))
    if any(t["retain"] is not None for t in first["table"]):
        lines.append(ref_row("retain", "retain"))
    for name, r in reports.items():
        cells = [f"{fmt(t['unlearned'])} {MARK.get(t['verdict'], '')}" for t in r["table"]]
        u = r["utility"]
        how = (" (as `llm-edit forget`" + (" --holdout" if r.get("holdout_given") else "") + ")"
               if r.get("as_forget") else "") + (
            "" if r.get("retain_set", True) else " (no retain set)")
        lines.append(f"| **{r.get('method', name)}**{' ' + ' '.join(r.get('sets') or []) if r.get('sets') else ''}{how} | "
                     + " | ".join(cells) + f" | {fmt(u['unlearned']['perplexity'])} | "
                     f"{fmt(u['unlearned'].get('retain_answered'))} | {u['verdict']} |"
                     + (tofu_cells(r["tofu"]["unlearned"]) if tofu else ""))
    lines += ["", "Verdicts: " + "; ".join(f"**{r.get('method', n)}**: {r['verdict']}" for n, r in reports.items()), "",
              "Cells: answered share for the question probes and relearning; for `quantized_*`, the share of "
              "the items the model forgot that are answered again after rounding (original/retain rows: the "
              "answered share of the rounded model); membership AUC for `mia_*`; mean extraction strength. "
              "F / P / N: forgotten / partly / not forgotten by the audit's thresholds "
              f"(recovery ≤ {first['config']['forgotten_max']} / ≤ {first['config']['partly_max']} / above).", "",
              "Audit time (s): " + ", ".join(f"{r.get('method', n)} {r.get('audit_s', '?')}" for n, r in reports.items()),
              "", "Sources: " + ", ".join(f"`{a}`" for a in args.audits)]
    atomic_write_text(Path(args.out), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
