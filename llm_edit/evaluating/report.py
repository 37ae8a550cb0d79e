"""Reports people read: the TOFU table (Markdown) and its plots (PNG), written atomically.

``tofu_table`` puts one model per row, with TOFU's Table 1 columns plus MUSE's PrivLeak
(open-unlearning's sign, on Min-K% and Min-K%++); ``plot_truth_ratios`` shows each model's forget truth-ratio distribution against the retain
model's (what forget quality tests); ``plot_quality_utility`` places models on TOFU's
forget-quality / model-utility plane (top right is best).
"""
from __future__ import annotations

import io
from pathlib import Path

from ..core.files import atomic_write_bytes, atomic_write_text

COLUMNS = [  # (header, how to read it from aggregates)
    ("forget quality ↑", lambda a: (a.get("forget_quality") or {}).get("value")),
    ("model utility ↑", lambda a: a.get("model_utility")),
    ("forget truth ratio", lambda a: a.get("forget_truth_ratio")),
    ("forget prob.", lambda a: a.get("forget_probability")),
    ("forget ROUGE-L", lambda a: a.get("forget_rouge")),
    ("PrivLeak (Min-K%)", lambda a: (a.get("privleak") or {}).get("value")),
    ("PrivLeak (Min-K%++)", lambda a: (a.get("privleak") or {}).get("min_k_plus_plus")),
    ("extraction strength", lambda a: a.get("extraction_strength")),
    ("retain prob.", lambda a: a.get("retain_probability")),
    ("retain ROUGE-L", lambda a: a.get("retain_rouge")),
]


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 100 or v == 0:
        return f"{v:.1f}" if abs(v) >= 100 else "0"
    if abs(v) < 1e-3:
        return f"{v:.1e}"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def tofu_table(rows: dict[str, dict]) -> str:
    head = "| model | " + " | ".join(h for h, _ in COLUMNS) + " |"
    lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for name, report in rows.items():
        a = report["aggregates"]
        lines.append(f"| {name} | " + " | ".join(_fmt(get(a)) for _, get in COLUMNS) + " |")
    return "\n".join(lines)


def tofu_summary(rows: dict[str, dict], title: str) -> str:
    """The title, the table and why a column is n/a: what the console shows, and how
    ``report.md`` begins."""
    any_report = next(iter(rows.values()))
    missing = [n for n, r in rows.items() if (r["aggregates"].get("forget_quality") or {}).get("value") is None]
    parts = [f"# {title}", "", tofu_table(rows), ""]
    if missing:
        parts += [f"Forget quality and PrivLeak are n/a for {', '.join(missing)}: "
                  + any_report["aggregates"]["forget_quality"]["status"], ""]
    return "\n".join(parts)


def tofu_markdown(rows: dict[str, dict], title: str, notes: list[str] = ()) -> str:
    any_report = next(iter(rows.values()))
    conv = any_report["conventions"]
    parts = [tofu_summary(rows, title)]
    task = any_report["task"]
    parts += ["## Data", "", f"- split: `{task['split']}`" + (f", first {task['authors']} authors" if task["authors"] else
                                                              ", full TOFU"),
              "- rows: " + ", ".join(f"{k} {v}" for k, v in task["rows"].items())]
    parts += [f"- {n}" for n in list(task.get("notes", [])) + list(notes)]
    settings = any_report["settings"]
    parts += ["", "## Conventions", "",
              f"- prompt format: {any_report['formatting']['qa_format']}"
              + (f" (system prompt: {any_report['formatting']['system_prompt']!r})"
                 if any_report["formatting"].get("system_prompt") else " (the template's default system prompt)"),
              f"- generation: greedy, at most {settings['max_new_tokens']} new tokens, stop strings "
              f"{settings['stop_strings']}, EOS"]
    parts += [f"- {k.replace('_', ' ')}: {v}" for k, v in conv.items()]
    parts += ["", "## Where the time went", ""]
    parts += [f"- {name}: " + ", ".join(f"{k} {v}" for k, v in r.get("timings", {}).items())
              + (" (cached)" if r.get("cached") else "") for name, r in rows.items()]
    return "\n".join(parts) + "\n"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def plot_truth_ratios(rows: dict[str, dict], path: Path, reference: dict | None = None) -> None:
    """One panel per model: histogram of its forget truth ratios, the retain model's overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    names = list(rows)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), sharey=True, squeeze=False)
    values = [r["truth_ratio"] for rep in list(rows.values()) + ([reference] if reference else [])
              for r in rep["items"]["forget"] if "truth_ratio" in r]
    # truth ratios are ratios of probabilities: log-spaced bins keep 0.1 and 10 equally far from 1
    low, high = min(values + [0.25]), max(values + [4.0])
    bins = np.geomspace(low, high, 21)
    for ax, name in zip(axes[0], names):
        mine = [r["truth_ratio"] for r in rows[name]["items"]["forget"] if "truth_ratio" in r]
        ax.hist(mine, bins=bins, alpha=0.6, label=name, color="tab:blue")
        if reference is not None:
            ref = [r["truth_ratio"] for r in reference["items"]["forget"] if "truth_ratio" in r]
            ax.hist(ref, bins=bins, histtype="step", linewidth=1.8, label="retain model", color="tab:orange")
        fq = (rows[name]["aggregates"].get("forget_quality") or {}).get("value")
        ax.set_title(f"{name}\nforget quality {_fmt(fq)}", fontsize=9)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks([t for t in (0.001, 0.01, 0.1, 0.25, 0.5, 1, 2, 4, 10, 100, 1000) if low <= t <= high])
        ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("truth ratio p(false)/p(true)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("items")
    fig.suptitle("Forget-set truth ratios vs the retain model (their KS test p-value = forget quality)",
                 fontsize=10, y=1.08)
    atomic_write_bytes(path, _png(fig))
    plt.close(fig)


def plot_quality_utility(rows: dict[str, dict], path: Path) -> None:
    """TOFU Fig. 5 style: forget quality (log scale) against model utility, one point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.8))
    for name, rep in rows.items():
        a = rep["aggregates"]
        fq, mu = (a.get("forget_quality") or {}).get("value"), a.get("model_utility")
        if fq is None or mu is None:
            continue
        ax.scatter([mu], [max(fq, 1e-12)], s=50)
        ax.annotate(name, (mu, max(fq, 1e-12)), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_yscale("log")
    xs = [r["aggregates"].get("model_utility") or 0 for r in rows.values()]
    ax.set_xlim(0, max(xs + [0.1]) * 1.2)
    ax.axhline(0.05, color="grey", linestyle=":", linewidth=1)
    ax.text(ax.get_xlim()[0], 0.05, " p = 0.05", fontsize=7, va="bottom", color="grey")
    ax.set_xlabel("model utility (harmonic mean of 9) →")
    ax.set_ylabel("forget quality (KS p-value) →")
    ax.set_title("Forget quality vs model utility (top right is best)", fontsize=10)
    atomic_write_bytes(path, _png(fig))
    plt.close(fig)


def write_tofu(out: Path, payload: dict, rows: dict[str, dict], title: str, *, reference: dict | None = None,
               notes: list[str] = ()) -> list[Path]:
    """``out/report.json`` (``payload``), ``report.md`` and the PNGs; returns the files written."""
    from ..core.files import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", payload)
    atomic_write_text(out / "report.md", tofu_markdown(rows, title, notes))
    written = [out / "report.json", out / "report.md"]
    has_tr = any("truth_ratio" in r for rep in rows.values() for r in rep["items"]["forget"])
    if has_tr:
        plot_truth_ratios({n: r for n, r in rows.items() if n != "retain"} or rows, out / "truth_ratios.png",
                          reference)
        written.append(out / "truth_ratios.png")
    if any((r["aggregates"].get("forget_quality") or {}).get("value") is not None for r in rows.values()):
        plot_quality_utility(rows, out / "quality_vs_utility.png")
        written.append(out / "quality_vs_utility.png")
    return written


_ROLE_TITLES = {"forget": "forget items", "neighbour": "neighbour facts (share the object or the relation; "
                "must survive)", "retain": "retain items"}


def forget_table_text(rows: list[dict], summary: dict, show: int = 10) -> str:
    """``llm-edit forget``'s console table: per role, P(answer) and the greedy answer before and
    after, and each row's status (``metrics.forget_status``); a headline line per role."""
    def clip(text, n):
        text = " ".join(text.split())
        return text if len(text) <= n else text[: n - 1] + "…"

    lines = []
    for role, s in summary.items():
        mine = [r for r in rows if r["role"] == role]
        outcome = "forgotten" if role == "forget" else "kept"
        lines += ["", f"{_ROLE_TITLES.get(role, role)}: {s[outcome]} of {s['known_before']} known before {outcome}"
                  + (f" ({s['items'] - s['known_before']} not known before)" if s["items"] > s["known_before"] else "")
                  + (f"; showing {min(show, len(mine))} of {len(mine)}" if len(mine) > show else ""),
                  f"  {'prompt':<36} {'answer':<14} {'P before':>8} {'P after':>8}  {'status':<16} "
                  "greedy before -> after"]
        for r in mine[:show]:
            lines.append(f"  {clip(r['prompt'], 36):<36} {clip(r['answer'], 14):<14} {r['p_before']:>8.4f} "
                         f"{r['p_after']:>8.4f}  {r['status']:<16} {clip(r['greedy_before'], 22)!r} -> "
                         f"{clip(r['greedy_after'], 22)!r}")
    return "\n".join(lines)
