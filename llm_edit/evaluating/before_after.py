"""What ``llm-edit edit`` and ``llm-edit forget`` measure around a change: the same table before
and after, the metrics it gives and the console text, so the commands only parse and print.

* an edit: each request's prompt, paraphrases and neighbours scored by P(target_true) and
  P(target_new) (``metrics.edit_table``), CounterFact's efficacy, generalisation and
  specificity of both tables, fluency on the first 20 prompts and generic-text perplexity, and
  the greedy answers in every form users ask and to the portability probes
  (``edit_forms``: whether the edit holds where people ask, not only in its own sentence);
* forgetting: the forget items, facts that share their object or relation (the first to
  suffer) and a sample of the retain items, each with P(answer) and the greedy answer before
  and after and a status (``metrics.compare_forget_rows``).
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

from ..editing.requests import EditRequest
from ..unlearning.items import ForgetItem, Formatting, given_neighbours, neighbour_facts
from .edit_forms import FormAnswer, before_scores, generation_answers, generation_scores
from .metrics import answer_rows, compare_forget_rows, edit_table, fluency, generic_perplexity, summarise

R = TypeVar("R")


@dataclass
class Measured(Generic[R]):
    """What a change returned, how long it took (without the measuring) and the check around it
    (None when not measured)."""

    result: R
    seconds: float
    check: "EditCheck | ForgetCheck | None" = None


@dataclass
class EditCheck:
    rows_before: list[dict]
    rows_after: list[dict]
    before: dict  # summarise() of rows_before, with fluency, perplexity and the generation scores
    after: dict
    answers_before: list[FormAnswer] = field(default_factory=list)
    answers_after: list[FormAnswer] = field(default_factory=list)

    def csv(self) -> str:
        """``results.csv``: one line per prompt, both probabilities before and after."""
        buf = io.StringIO()
        fields = ["request", "kind", "prompt", "target_true", "target_new", "p_true_before", "p_new_before",
                  "p_true_after", "p_new_after"]
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        for b, a in zip(self.rows_before, self.rows_after):
            w.writerow({**{k: b[k] for k in fields[:5]}, "p_true_before": f"{b['p_true']:.6g}",
                        "p_new_before": f"{b['p_new']:.6g}", "p_true_after": f"{a['p_true']:.6g}",
                        "p_new_after": f"{a['p_new']:.6g}"})
        return buf.getvalue()

    def answers_csv(self) -> str:
        """``answers.csv``: one line per form and portability probe, the greedy answers before and after."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["request", "form", "expected", "unwanted", "answer_before", "said_unwanted_before", "answer_after",
                    "holds_after"])
        for b, a in zip(self.answers_before, self.answers_after):
            w.writerow([a.request, a.form, a.expected, a.unwanted or "", b.answer, int(b.says_old), a.answer,
                        int(a.holds)])
        return buf.getvalue()

    def text(self) -> str:
        """The console's metric table: one line per metric, before and after (generation scores
        with the number of answers they count)."""
        def fmt(v):
            return "-" if v is None else f"{v:.3f}"

        lines = [f"{'metric':<16}{'before':>10}{'after':>10}"]
        for key, value in self.after.items():
            if value is None or key.endswith("_n"):
                continue
            n = self.after.get(f"{key}_n")
            lines.append(f"{key:<16}{fmt(self.before.get(key)):>10}{fmt(value):>10}" + (f"  (of {n})" if n else ""))
        return "\n".join(lines)


def edit_metrics(model, tok, requests: list[EditRequest], prompts: list[str]):
    """The probability table, every form's greedy answers and the summary metrics (CounterFact's
    three, fluency on ``prompts``, perplexity) of ``model`` as it is now."""
    rows = edit_table(model, tok, requests)
    answers = generation_answers(model, tok, requests)
    return rows, answers, dict(summarise(rows), fluency=fluency(model, tok, prompts),
                               perplexity=generic_perplexity(model, tok))


def measure_edit(model, tok, requests: list[EditRequest], change: Callable[[], R], *,
                 evaluate: bool = True) -> Measured[R]:
    """Run ``change`` (an edit of ``model`` in place) between two measurements of the requests;
    without ``evaluate`` (or without any ``target_true`` to compare with), only time it."""
    evaluate = evaluate and any(r.target_true for r in requests)
    prompts = [r.text for r in requests[:20]]
    if evaluate:
        rows_before, answers_before, before = edit_metrics(model, tok, requests, prompts)
    t0 = time.perf_counter()
    result = change()
    seconds = time.perf_counter() - t0
    if not evaluate:
        return Measured(result, seconds)
    rows_after, answers_after, after = edit_metrics(model, tok, requests, prompts)
    before.update(before_scores(answers_before))
    after.update(generation_scores(answers_after, answers_before))
    return Measured(result, seconds, EditCheck(rows_before, rows_after, before, after, answers_before, answers_after))


@dataclass
class ForgetCheck:
    rows: list[dict]  # one per item and role, before and after (``metrics.compare_forget_rows``)
    summary: dict = field(default_factory=dict)  # per role: items, known before, forgotten or kept

    def text(self, show: int = 10) -> str:
        from .report import forget_table_text

        return forget_table_text(self.rows, self.summary, show)


def forget_groups(forget_items: list[ForgetItem], retain_items: list[ForgetItem] | None) -> dict[str, list]:
    """What the forget table compares: the forget items, neighbour facts (given with the items,
    else shipped known facts sharing their object or relation) and up to 20 retain items."""
    return {"forget": forget_items, "neighbour": given_neighbours(forget_items) or neighbour_facts(forget_items),
            "retain": (retain_items or [])[:20]}


def measure_forget(model, tok, groups: dict[str, list[ForgetItem]], fmt: Formatting, change: Callable[[], R], *,
                   evaluate: bool = True) -> Measured[R]:
    """Run ``change`` (returning a ``ForgetResult``, whose ``model`` is measured after) between
    two answer tables of ``groups``."""
    def table(m):
        return [row for role, items in groups.items() for row in answer_rows(m, tok, items, fmt, role)]

    before = table(model) if evaluate else []
    t0 = time.perf_counter()
    result = change()
    seconds = time.perf_counter() - t0
    if not evaluate:
        return Measured(result, seconds)
    rows, summary = compare_forget_rows(before, table(result.model))
    return Measured(result, seconds, ForgetCheck(rows, summary))
