"""AlphaEdit solve grids as one picture: efficacy against perplexity after the last batch, one
point per setting of every ``evals/alphaedit_solve_grid.py`` output given, the recipe's point
ringed, the issue's box (efficacy at least ``--min-efficacy``, perplexity at most ``--max-increase``
over the model's) shaded.

    python evals/plot_solve_grid.py evals/results/gemma/alphaedit_solve_grid_skip700*.json \\
        --base-perplexity 100.5 --out evals/results/gemma/alphaedit_solve_grid_skip700.png

Settings that all sit on one curve are one trade, whatever the knob: no setting reaches the box.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_edit.core.files import atomic_write_bytes  # noqa: E402


def points(path: Path) -> list[dict]:
    """One point per run of a grid output: its setting as a label and the last curve point."""
    try:
        report = json.loads(path.read_text())
        runs = report["runs"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f"{path}: not an alphaedit_solve_grid.py output ({err})")
    extra = list(report.get("sets", []))
    scale = report.get("nullspace_scale")
    out = []
    for run in runs:
        last = run["curve"][-1]
        setting = {k: (int(v) if float(v).is_integer() else v) for k, v in run["setting"].items()}
        label = ", ".join([f"{k.replace('nullspace_', '')} {v}" for k, v in setting.items()] + extra + ([f"{scale} scale"] if scale == "energy" else []))
        out.append({"label": label, "efficacy": last["efficacy"], "perplexity": last["perplexity"],
                    "edits": last["edits"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grids", nargs="+", type=Path)
    ap.add_argument("--base-perplexity", type=float, required=True, help="the unedited model's generic perplexity")
    ap.add_argument("--recipe", default="alpha 30, threshold 0.08",
                    help="the label of the recipe's setting, ringed")
    ap.add_argument("--min-efficacy", type=float, default=0.85)
    ap.add_argument("--max-increase", type=float, default=0.10)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.base_perplexity <= 0:
        raise SystemExit("--base-perplexity must be > 0")
    if args.out.suffix != ".png":
        raise SystemExit(f"--out {args.out}: a .png path")
    found = [p for path in args.grids for p in points(path)]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    limit = args.base_perplexity * (1 + args.max_increase)
    ax.fill_between([min(p["perplexity"] for p in found + [{"perplexity": args.base_perplexity}]) - 2, limit],
                    args.min_efficacy, 1.02, color="tab:green", alpha=0.12, label="the ask")
    span = max(p["perplexity"] for p in found) - min(p["perplexity"] for p in found) or 1.0
    placed: list[dict] = []
    for p in sorted(found, key=lambda q: -q["efficacy"]):
        # labels of points close together are stacked downwards instead of printed over each other,
        # the higher point's first, so that each label stays on its own point's side
        near = sum(abs(q["perplexity"] - p["perplexity"]) < 0.3 * span and abs(q["efficacy"] - p["efficacy"]) < 0.02
                   for q in placed)
        placed.append(p)
        ringed = p["label"] == args.recipe
        ax.scatter([p["perplexity"]], [p["efficacy"]], s=60 if ringed else 28,
                   facecolors="none" if ringed else "tab:blue", edgecolors="tab:red" if ringed else "tab:blue",
                   linewidths=1.8 if ringed else 0.8, zorder=3)
        ax.annotate(p["label"] + (" (recipe)" if ringed else ""), (p["perplexity"], p["efficacy"]),
                    textcoords="offset points", xytext=(4, 3 - 8 * near), fontsize=6)
    ax.axvline(args.base_perplexity, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(f"generic perplexity after {found[0]['edits']} edits (before: {args.base_perplexity:g})")
    ax.set_ylabel("efficacy")
    ax.set_ylim(min(p["efficacy"] for p in found) - 0.05, 1.02)
    ax.set_title("AlphaEdit's solve settings: efficacy against perplexity (top left is best)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(args.out, buf.getvalue())
    print(f"{len(found)} settings -> {args.out}")


if __name__ == "__main__":
    main()
