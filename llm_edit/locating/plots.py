"""Pictures of causal tracing: one fact's heat map per kind of state, and the average effect
per layer over many facts (the plot ``--layers auto`` reads its peak from)."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from ..core.files import atomic_write_bytes
from .average import AverageTrace
from .trace import KINDS, TraceResult

_CMAPS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}


def _save_figure(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())


def plot_trace(result: TraceResult, kind: str, path: str | Path) -> None:
    """ROME-style heat map: tokens down, layers across, colour = p(target) after restoring;
    subject tokens marked with *; rows before the subject show p_corrupted (IE = 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = [[result.p_corrupted if v is None else v for v in row] for row in result.scores[kind]]
    n_tok, n_layers = len(grid), len(grid[0])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.16 * n_layers + 2), 0.32 * n_tok + 1.2))
    image = ax.pcolor(torch.tensor(grid).numpy(), cmap=_CMAPS[kind], vmin=result.p_corrupted)
    ax.invert_yaxis()
    ax.set_yticks([i + 0.5 for i in range(n_tok)])
    labels = [repr(t)[1:-1] + (" *" if result.subject_first <= i <= result.subject_last else "")
              for i, t in enumerate(result.tokens)]
    ax.set_yticklabels(labels)
    step = max(1, n_layers // 10)
    ax.set_xticks([i + 0.5 for i in range(0, n_layers, step)])
    ax.set_xticklabels(list(range(0, n_layers, step)))
    ax.set_xlabel(f"restored layer ({KINDS[kind]}" + (f", window {result.window})" if kind != "hidden" else ")"))
    ax.set_title(f"Restoring the {KINDS[kind]} after corrupting the subject (*)\n"
                 f"p({result.target.strip()!r}): clean {result.p_clean:.3f}, corrupted {result.p_corrupted:.3f}",
                 fontsize=9)
    fig.colorbar(image, ax=ax, label=f"p({result.target.strip()!r})")
    _save_figure(fig, path)


def plot_average(avg: AverageTrace, path: str | Path, title: str = "") -> None:
    """Average indirect effect per layer, one line per kind; solid at the subject's last
    token, dashed at the prompt's last token; the chosen layer marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"hidden": "tab:purple", "mlp": "tab:green", "attn": "tab:red"}
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for kind in avg.kinds:
        for pos, style in (("last_subject", "-"), ("last", "--")):
            values = avg.effects[kind][pos]
            where = "last subject token" if pos == "last_subject" else "last token"
            ax.plot(range(len(values)), values, style, color=colours[kind], label=f"{KINDS[kind]}, {where}")
    if "mlp" in avg.kinds:
        peak = avg.peak("mlp")
        ax.axvline(peak, color="grey", lw=0.8, ls=":")
        ax.annotate(f"peak: layer {peak}", (peak, max(avg.effects["mlp"]["last_subject"])),
                    textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("layer")
    ax.set_ylabel("average indirect effect on p(object)")
    ax.set_title(title or f"Average causal trace over {avg.n_facts} known facts ({avg.samples} noise draws)",
                 fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save_figure(fig, path)
