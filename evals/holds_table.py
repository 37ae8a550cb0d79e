"""One markdown table of several ``evals/forget_holds.py`` runs: the question probes (answered
share after, with the verdict's initial), neighbours and unrelated facts kept, perplexity and
time, with the original model's row first.

    python evals/holds_table.py --title "Development facts" --out evals/results/holds/dev.md \
        evals/results/holds/dev_*
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_edit.core.files import atomic_write_text  # noqa: E402

MARK = {"forgotten": "F", "partly": "P", "not forgotten": "N", "n/a": "–"}


def kept(summary: dict, name: str) -> str:
    """The kept share, and where the run trained on or protected judged facts, the share over the others
    (``forget_holds.py`` writes it, or ``--rescore`` adds it)."""
    cell = f"{summary[f'{name}_kept']:.3f}"
    untrained, n = summary.get(f"{name}_kept_untrained"), summary.get(f"{name}_untrained_known_before")
    if untrained is not None and n != summary[f"{name}_known_before"]:
        return cell + f" ({untrained:.3f} on {n} untrained)"
    if summary["leaks"] and untrained is None:
        return cell + " leaks!"
    return cell


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--title", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    reports = [(Path(r), json.loads((Path(r) / "holds.json").read_text())) for r in args.runs]
    probes = list(reports[0][1]["summary"]["probes"])
    subject_known = next((r["summary"]["subject_facts_known_before"] for _, r in reports
                          if "subject_facts_known_before" in r["summary"]), None)
    subject = subject_known is not None  # a column only where measured
    head = (["run", "configuration"] + probes + ["forgotten probes", "neighbours kept", "unrelated kept"]
            + ["subject facts kept"] * subject + ["perplexity", "seconds"])
    lines = [f"# {args.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = reports[0][1]["summary"]
    lines.append("| | original | " + " | ".join(f"{first['probes'][p]['original']:.2f}" for p in probes)
                 + f" | | {first['neighbours_known_before']} known | {first['unrelated_known_before']} known | "
                 + (f"{subject_known} known | " if subject else "")
                 + f"{first['perplexity_before']:.2f} | |")
    for path, report in reports:
        s = report["summary"]
        name = f"{path.name} | {s['method']}" + (" " + " ".join(s["sets"]) if s["sets"] else "")
        protected = s.get("protective_retain", 0)
        if protected and not any(x.startswith("protect_neighbours=") for x in s["sets"]):
            name += f" ({protected} protected facts)"
        cells = [f"{s['probes'][p]['unlearned']:.2f} {MARK[s['probes'][p]['verdict']]}" if p in s["probes"] else "–"
                 for p in probes]
        judged = [v for v in s["probes"].values() if v["verdict"] != "n/a"]
        forgotten = sum(v["verdict"] == "forgotten" for v in judged)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {forgotten} of {len(judged)} | "
                     f"{kept(s, 'neighbours')} | {kept(s, 'unrelated')} | "
                     + (f"{s['subject_facts_kept']:.3f} | " if s.get("subject_facts_kept") is not None
                        else "– | " if subject else "")
                     + f"{s['perplexity_rise']:+.1%} | "
                     f"{s['forget_seconds']} |")
    lines += ["", "Cells: the share of forget items whose object appears in the unlearned model's greedy answer "
              "(48 tokens; F/P/N: the audit's verdict against the original: recovery ≤ 0.25 / ≤ 0.6 / above). "
              "Neighbours and unrelated: the share of the facts the original answered (object in a 16-token "
              "greedy continuation) that the unlearned model still answers. Perplexity: change on "
              "llm_edit/data/generic_text.txt. Seconds: the forget call alone. Where the run trained on or "
              "protected some of the judged facts' subjects, the figure on the others follows in brackets "
              "(`forget_holds.py --rescore`); `leaks!` where that figure is missing.", "",
              "Sources: " + ", ".join(f"`{p}`" for p, _ in reports)]
    atomic_write_text(Path(args.out), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
