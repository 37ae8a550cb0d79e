"""The audit's report: the probe table with recoveries and verdicts, the utility guard, the
console text (``audit_summary``) and the files (``write_audit``: audit.json, audit.md,
recovery.png)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..evaluating import tofu_metrics as M
from .probes import PROBES, forgotten_items, recovery, verdict


def summarise(rows, items, config, retain_report, timings) -> dict:
    """The report ``audit`` returns, from each model's rows."""
    u, o, r = rows["unlearned"], rows["original"], rows.get("retain")
    table = []

    def add(probe, kind, value_u, value_o, value_r, rec, note=""):
        table.append({"probe": probe, "kind": kind, "unlearned": value_u, "original": value_o, "retain": value_r,
                      "recovery": rec, "verdict": verdict(rec, config), "note": note})

    for p in PROBES:
        ru, ro = u["probes"][p]["rate"], o["probes"][p]["rate"]
        rr = r["probes"][p]["rate"] if r else None
        add(p, "answered share", ru, ro, rr, recovery(ru, ro, rr or 0.0))
    # relearning: recovery on the held-out half after training on the other half
    for key, base_key, what in (("relearn_forget_half", "direct_on_second_half", "second half, after training on the first"),
                                ("relearn_benign", None, "all forget items, after training on retain items")):
        ru, ro = u["relearn"].get(key), o["probes"]["direct"]["rate"] if base_key is None else o["relearn"].get(base_key)
        rr = r["relearn"].get(key) if r else None
        add(key, "answered share", ru, ro, rr, recovery(ru, ro, rr or 0.0), what)
    # quantization: of the items the unlearned model forgot (the original answered them), how many return
    forgot = forgotten_items(u["probes"], o["probes"])
    for kind in ("q8_0", "q4_0"):
        answered_again = {r["item"] for r in u["quantized"][kind]["items"] if r["answered"]}
        back = [i for i in forgot if i in answered_again]
        share = len(back) / len(forgot) if forgot else None
        add(f"quantized_{kind}", "share of forgotten items that return", share,
            o["quantized"][kind]["rate"], None, share,
            f"{len(back)} of {len(forgot)} forgotten items answered again; original column: answered share of the "
            f"quantized original")
    # membership inference and extraction
    ref_auc = (r["mia"].get("auc_min_k_plus_plus") if r else None)
    if ref_auc is None and retain_report:
        ref_auc = (retain_report.get("aggregates", {}).get("mia_auc") or {}).get("min_k_plus_plus")
    if "auc_min_k_plus_plus" in u["mia"]:
        au, ao = u["mia"]["auc_min_k_plus_plus"], o["mia"]["auc_min_k_plus_plus"]
        floor = ref_auc if ref_auc is not None else 0.5
        add("mia_min_k_plus_plus", "membership AUC", au, ao, ref_auc, recovery(au, ao, floor),
            f"PrivLeak (Min-K%++, open-unlearning's sign: < 0 still looks trained on) vs retain: {M.privleak(au, ref_auc):.1f}" if ref_auc else "floor: AUC 0.5 (no retain reference)")
        add("mia_loss", "membership AUC", u["mia"]["auc_loss"], o["mia"]["auc_loss"],
            r["mia"]["auc_loss"] if r else None,
            recovery(u["mia"]["auc_loss"], o["mia"]["auc_loss"], r["mia"]["auc_loss"] if r else 0.5))
    es_r = r["mia"]["extraction_strength"] if r else 0.0
    add("extraction_strength", "mean", u["mia"]["extraction_strength"], o["mia"]["extraction_strength"],
        r["mia"]["extraction_strength"] if r else None,
        recovery(u["mia"]["extraction_strength"], o["mia"]["extraction_strength"], es_r))
    # the utility guard
    util = {"unlearned": u["utility"], "original": o["utility"]}
    ppl_rise = u["utility"]["perplexity"] / o["utility"]["perplexity"] - 1
    kept = None
    if o["utility"].get("retain_answered"):
        kept = u["utility"]["retain_answered"] / o["utility"]["retain_answered"]
    broken = ppl_rise > config.utility_max_drop or (kept is not None and kept < 1 - config.utility_max_drop)
    util.update({"perplexity_rise": ppl_rise, "retain_kept": kept, "verdict": "degraded" if broken else "kept"})
    leaks = [t for t in table if t["verdict"] in ("not forgotten", "partly")]
    judged = [t for t in table if t["verdict"] != "n/a"]
    worst = max(judged, key=lambda t: t["recovery"]) if judged else None
    if not judged:
        line = "NO VERDICT: the original model does not answer the forget items under any probe"
    elif not leaks:
        line = f"FORGOTTEN under all {len(judged)} probes"
    else:
        line = (f"NOT FORGOTTEN: {len(leaks)} of {len(judged)} probes recover the answers (worst: {worst['probe']}, "
                f"recovery {worst['recovery']:.2f})")
    line += "; utility " + ("DEGRADED" if broken else "kept") + (
        f" (perplexity {ppl_rise:+.1%}" + (f", retain answers kept {kept:.0%})" if kept is not None else ")"))
    return {"verdict": line, "table": table, "utility": util, "config": dataclasses.asdict(config),
            "items": [x.to_dict() for x in items], "details": rows, "timings": timings}


def audit_summary(report: dict, title: str) -> str:
    """The verdict line and the probe table: what the console shows, and how ``audit.md`` begins."""
    from ..evaluating.report import _fmt

    lines = [f"# {title}", "", f"**{report['verdict']}**", "",
             "| probe | measure | unlearned | original | retain | recovery | verdict | note |",
             "|---|---|---|---|---|---|---|---|"]
    for t in report["table"]:
        lines.append(f"| {t['probe']} | {t['kind']} | {_fmt(t['unlearned'])} | {_fmt(t['original'])} | "
                     f"{_fmt(t['retain'])} | {_fmt(t['recovery'])} | {t['verdict']} | {t['note']} |")
    return "\n".join(lines)


def write_audit(out: Path, report: dict, title: str) -> None:
    """``audit.json``, ``audit.md`` (verdict line, then the table) and ``recovery.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..core.files import atomic_write_bytes, atomic_write_text, write_json
    from ..evaluating.report import _png

    write_json(out / "audit.json", report)
    c = report["config"]
    lines = [audit_summary(report, title)]
    u = report["utility"]
    lines += ["", "## Utility guard", "",
              f"perplexity on generic text: unlearned {u['unlearned']['perplexity']:.3f}, original "
              f"{u['original']['perplexity']:.3f} ({u['perplexity_rise']:+.1%})"
              + (f"; retain items answered: unlearned {u['unlearned']['retain_answered']:.3f}, original "
                 f"{u['original']['retain_answered']:.3f}" if u["unlearned"].get("retain_answered") is not None else "")
              + f" → **{u['verdict']}**", "",
              "## How to read it", "",
              f"- answered: a fact's object appears in its greedy continuation; a question's greedy answer has "
              f"ROUGE-L recall ≥ {c['answered_rouge']} against the reference (at most {c['max_new_tokens']} tokens).",
              "- recovery = (unlearned − floor) / (original − floor), clipped to [0, 1]; floor = the retain model's "
              "value when given, else 0 (AUC: 0.5).",
              f"- verdict: forgotten ≤ {c['forgotten_max']} < partly ≤ {c['partly_max']} < not forgotten.",
              f"- relearning: LoRA r={c['relearn_lora_r']}, {c['relearn_steps']} steps, lr {c['relearn_lr']}, batch "
              f"{c['relearn_batch_size']}, seed {c['seed']}.",
              "- quantization: block weights rounded through gguf's Q8_0 / Q4_0 (groups of 32, round to nearest).",
              "- every number's items are in audit.json (`details`).", "",
              "## Time", ""] + [f"- {k}: {v} s" for k, v in report["timings"].items()]
    atomic_write_text(out / "audit.md", "\n".join(lines) + "\n")
    judged = [t for t in report["table"] if t["recovery"] is not None]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    colours = {"forgotten": "tab:green", "partly": "tab:orange", "not forgotten": "tab:red"}
    ax.bar([t["probe"] for t in judged], [t["recovery"] for t in judged],
           color=[colours.get(t["verdict"], "grey") for t in judged])
    ax.axhline(c["forgotten_max"], color="grey", linestyle=":", linewidth=1)
    ax.axhline(c["partly_max"], color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recovery (0: forgotten, 1: as original)")
    ax.set_title(title, fontsize=10)
    plt.setp(ax.get_xticklabels(), rotation=40, ha="right", fontsize=8)
    atomic_write_bytes(out / "recovery.png", _png(fig))
    plt.close(fig)
