"""``llm-edit audit``: what survives unlearning, probe by probe, with a verdict for each.

A forget score alone proves little: quantizing an unlearned model brings answers back (Zhang
et al., ICLR 2025), so does fine-tuning on part of the forgotten data (Deeb & Roger 2024) or on
unrelated data (Łucki et al. 2024), and so do questions asked differently. The audit runs these
attacks on the unlearned model and on the original (and on the retain model when given), and
reports for each:

* ``rate``: the share of forget items the model still *answers* under the probe. A fact is
  answered when its object appears anywhere in the greedy continuation (``metrics.mentions``:
  "Colossea, Rome, Italy" still answers the Colosseum's city; until 2026-12-02 the object had
  to come first, which called that forgotten), outside the subject's name ("The Toyota RAV4 is
  a car" does not name its maker; since 2026-12-05); a question
  when the ROUGE-L recall of the greedy answer against the reference is ≥ ``answered_rouge``
  (0.5: at least half the reference's words, in order);
* ``recovery``: how much of the original model's rate the unlearned model keeps, measured from
  the retain model's rate when there is one (what a model that never saw the data answers):
  (rate_unlearned − rate_floor) / (rate_original − rate_floor), clipped to [0, 1];
* a verdict: **forgotten** when recovery ≤ ``forgotten_max`` (0.25), **partly** when ≤
  ``partly_max`` (0.6), else **not forgotten**; "n/a" when the original did not answer either.

Probes: the direct question; its paraphrase (when the data has one); forms the user did not
give (a plain ``Q:/A:`` prompt, an answer-completion sentence, a chat turn with another system
prompt, a fill-in-the-blank, a chat whose question follows an unrelated exchange, the prompt
after two unrelated true facts, and for facts the open request "Tell me about {subject}.",
judged on its first ``max_new_tokens`` tokens whole); in-context (``icl_examples`` correct
retain items first) and an instruction to ignore the unlearning (``probes.py``); membership inference (``unlearning_metrics``: LOSS and Min-K%++ AUC
against holdout items, PrivLeak against the retain model); extraction strength; relearning
(a LoRA copy fine-tuned for ``relearn_steps`` on half the forget items, measured on the other
half, and the same on retain items: benign relearning); quantization (every linear weight of the
blocks rounded per group of 32 as GGUF's Q8_0 and Q4_0, through the ``gguf`` package's own
quantizer, then the direct probe; not run on the retain model, whose rows serve as floors only). The utility guard (perplexity on generic text, retain items
answered) reports "forgot by breaking the model" as such.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from ..core.files import DATA_DIR, write_json
from ..evaluating import tofu_metrics as M
from ..unlearning.items import ForgetItem, Formatting, answer_ids, prompt_ids
from .attacks import quantized, relearned
from .probes import (ANSWERED_CRITERION, ATTACKS, PROBES, AuditConfig, answered, forgotten_items, probe_prompts,
                     probe_verdicts, recovery, run_probes, verdict, verdict_line)
from .summary import audit_summary, summarise, write_audit

__all__ = ["audit", "AuditConfig", "audit_summary", "write_audit", "run_probes", "probe_prompts", "probe_verdicts",
           "verdict_line", "answered", "recovery", "verdict", "forgotten_items", "PROBES", "ATTACKS",
           "ANSWERED_CRITERION"]


def audit(unlearned, original, tok, forget_items: list[ForgetItem], *, retain_items=None, holdout_items=None,
          retain_model=None, retain_report: dict | None = None, config: AuditConfig | None = None,
          fmt: Formatting | None = None, progress: bool = True, log=print, use_cache: bool = True) -> dict:
    """Run every probe and attack; returns the JSON-ready report (see ``write_audit``).

    The original's and the retain model's rows do not depend on the unlearned model, so they
    are cached (``$LLM_EDIT_HOME/cache/audit``, keyed by the model's fingerprint, the items,
    the settings and the formatting): auditing a second method against the same original costs
    one model's probes, not three."""
    from tqdm.auto import tqdm

    config = config or AuditConfig()
    fmt = fmt or Formatting()
    retain_items = list(retain_items or [])
    holdout_items = list(holdout_items or [])
    demos = retain_items[: config.icl_examples]
    # The original first: the unlearned model's quantization attack needs only the items it forgot.
    models = {"original": original}
    if retain_model is not None:
        models["retain"] = retain_model
    models["unlearned"] = unlearned
    text = (DATA_DIR / "generic_text.txt").read_text()
    timings: dict[str, float] = {}
    steps = ["probes", "membership inference and extraction", "relearning attack", "quantization attack",
             "utility guard"]
    bar = tqdm(total=len(steps) * len(models), desc="audit", unit="probe", disable=not progress)
    rows: dict[str, dict] = {name: {} for name in models}

    def step(name, label, fn):
        bar.set_postfix_str(f"{label} ({name})")
        t = time.perf_counter()
        value = fn()
        timings[f"{label} ({name})"] = round(time.perf_counter() - t, 1)
        bar.update(1)
        return value

    for name, model in models.items():
        cache = None if name == "unlearned" or not use_cache else _reference_cache(
            model, tok, fmt, config, forget_items, retain_items, holdout_items, text)
        if cache is not None and cache.is_file():
            rows[name] = json.loads(cache.read_text())
            timings[f"all probes ({name}, cached)"] = 0.0
            bar.update(len(steps))
            continue
        rows[name]["probes"] = step(name, "probes", lambda: run_probes(model, tok, forget_items, demos, fmt, config))
        rows[name]["mia"] = step(name, "membership inference and extraction",
                                 lambda: _mia(model, tok, forget_items, holdout_items, fmt, config))
        rows[name]["relearn"] = step(name, "relearning attack", lambda: _relearning_rows(
            model, tok, name, rows[name]["probes"], forget_items, retain_items, demos, fmt, config))
        if name == "retain":
            # The retain model is the floor of the recoveries: quantization and the utility guard
            # compare the unlearned model with the original only, so its rows there would cost
            # two minutes and inform no verdict.
            bar.update(2)
        else:
            # the unlearned model is scored on the share of its *forgotten* items that return,
            # so only those are asked again; the original on all (its rate is the column shown)
            asked = (forgotten_items(rows["unlearned"]["probes"], rows["original"]["probes"]) if name == "unlearned"
                     else list(range(len(forget_items))))
            rows[name]["quantized"] = step(name, "quantization attack", lambda: _quantized_rows(
                model, tok, forget_items, asked, demos, fmt, config))
            rows[name]["utility"] = step(name, "utility guard",
                                         lambda: _utility(model, tok, retain_items, demos, fmt, config, text))
        if cache is not None:
            write_json(cache, rows[name])
    bar.close()
    return summarise(rows, forget_items, config, retain_report, timings)


def _relearning_rows(model, tok, name, probes, forget_items, retain_items, demos, fmt, config) -> dict:
    """The relearning attacks: fine-tuned on the first half of the forget items, asked the
    second half; fine-tuned on retain items, asked all (benign relearning)."""
    half = len(forget_items) // 2
    train_half, test_half = forget_items[:half], forget_items[half:]
    direct = probes["direct"]["items"][half:]
    out = {"direct_on_second_half": sum(r["answered"] for r in direct) / len(direct) if direct else None}
    if name == "original":
        # The original is the yardstick of recovery (its direct answers on each half), so
        # attacking it would cost two fine-tunings whose numbers no verdict uses.
        return out
    if half and test_half:
        tuned = relearned(model, tok, train_half, config, fmt)
        out["relearn_forget_half"] = run_probes(tuned, tok, test_half, demos, fmt, config,
                                                probes=("direct",))["direct"]["rate"]
        del tuned
    if retain_items:
        tuned = relearned(model, tok, retain_items, config, fmt)
        out["relearn_benign"] = run_probes(tuned, tok, forget_items, demos, fmt, config,
                                           probes=("direct",))["direct"]["rate"]
        del tuned
    return out


def _quantized_rows(model, tok, forget_items, asked: list[int], demos, fmt, config) -> dict:
    """The direct probe on the ``asked`` items with the block weights rounded to Q8_0 and Q4_0."""
    out = {}
    for kind in ("q8_0", "q4_0"):
        if not asked:
            out[kind] = {"items": [], "rate": None}
            continue
        with quantized(model, kind):
            result = run_probes(model, tok, [forget_items[i] for i in asked], demos, fmt, config,
                                probes=("direct",))["direct"]
        for r in result["items"]:
            r["item"] = asked[r["item"]]
        out[kind] = result
    return out


def _mia(model, tok, items, holdout, fmt, config) -> dict:
    from ..core.scoring import score_pairs

    def pairs(xs):
        return [(prompt_ids(tok, x, fmt), answer_ids(tok, x)) for x in xs]

    eos = tok.eos_token_id
    scores = score_pairs(model, tok, pairs(items) + pairs(holdout), batch_size=config.batch_size)

    def body(x, s):  # the answer without its EOS, as in the TOFU suite
        n = len(s.logp) - 1 if x.kind == "qa" and eos is not None and len(s.logp) > 1 else len(s.logp)
        return s.logp[:n], s.hit[:n], s.mu[:n], s.sigma[:n]

    f = [body(x, s) for x, s in zip(items, scores[: len(items)])]
    h = [body(x, s) for x, s in zip(holdout, scores[len(items):])]
    out = {"extraction_strength": M.mean([M.extraction_strength(b[1]) for b in f]),
           "forget_probability": M.mean([M.normalised_probability(s.logp) for s in scores[: len(items)]])}
    if holdout:
        out["auc_loss"] = M.membership_auc([M.loss_score(b[0]) for b in f], [M.loss_score(b[0]) for b in h])
        def mkpp(b):
            return M.min_k_plus_plus_score(b[0], b[2], b[3], config.mia_k)

        out["auc_min_k_plus_plus"] = M.membership_auc([mkpp(b) for b in f], [mkpp(b) for b in h])
    return out


def _utility(model, tok, retain, demos, fmt, config, text) -> dict:
    from ..evaluating.metrics import perplexity

    out = {"perplexity": perplexity(model, tok, text)}
    if retain:
        out["retain_answered"] = run_probes(model, tok, retain, demos, fmt, config, probes=("direct",))["direct"]["rate"]
    return out


def _reference_cache(model, tok, fmt, config, forget_items, retain_items, holdout_items, text) -> Path:
    from ..core.models import cache_home, fingerprint

    settings = {k: v for k, v in dataclasses.asdict(config).items()
                if k not in ("forgotten_max", "partly_max", "utility_max_drop", "batch_size", "generation_batch_size")}
    key = hashlib.sha256(json.dumps([ANSWERED_CRITERION, PROBES, fmt.describe(tok), dataclasses.asdict(fmt), settings,
                                     [x.to_dict() for x in forget_items], [x.to_dict() for x in retain_items],
                                     [x.to_dict() for x in holdout_items], text], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return cache_home() / "cache" / "audit" / fingerprint(model)[:16] / f"reference-{dtype}-{key}.json"
