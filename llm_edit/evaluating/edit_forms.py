"""Whether an edit holds where users ask, judged by what the model *says*: greedy answers to
the rewritten fact asked in other forms, and to its one-hop consequences.

CounterFact's scores (``metrics.summarise``) compare two probabilities on the edit's own
sentence and its paraphrases, the easiest test there is; when edits were judged by generation
instead, single-edit success fell from 96.8% to 38.5% (WILD, Yang et al. 2025, arXiv
2502.11177). Forms (each request's greedy answer, ``max_new_tokens`` tokens):

* ``prompt``: the edit's own sentence, by generation (EasyEdit's ``rewrite_acc`` is its
  teacher-forced counterpart, CounterFact's ES the probability comparison);
* ``chat``: a user turn through the model's chat template: the fact's question (MQuAKE's
  template for its Wikidata relation) or, without one, a request to complete the sentence;
  n/a without a chat template;
* ``question``: the question as plain text ("Question: ...\\nAnswer:"); n/a without a
  relation template;
* ``in_context``: the sentence after two unrelated true facts.

Success in a form: the new object appears in the answer and the old one does not, outside the
subject's own name (the subject "Toyota RAV4" repeated in "The Toyota RAV4 is made by Honda"
does not name the maker Toyota; until 2026-12-05 it counted as the old object). It is
reported over the requests whose form the model answered with the old object *before* the
edit (a form the model never answered says nothing about the edit), with the count beside it.

Portability (EasyEdit's name, Yao et al. 2023, "Editing Large Language Models", §3): the share
of one-hop probes (``EditRequest.portability``: "The Eiffel Tower is in the country of" ->
"Italy" after Paris -> Rome) whose greedy answer contains the expected answer.

These wordings are the judge: the editors' training forms (``core.forms``) use none of them
(``tests/test_edit_forms.py``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.forms import question_template
from ..core.text import blank_out, mentions
from ..editing.requests import EditRequest
from ..unlearning.items import Formatting, question_prefix

FORMS = ("prompt", "chat", "question", "in_context")
# two true facts no edit set here is about, before the prompt
CONTEXT = "Honey bees make honey from the nectar of flowers. A week has seven days. "
COMPLETE = "Complete the sentence: {} ..."
QUESTION = "Question: {}\nAnswer:"
# a plain continuation is judged on its first line (what follows is the model rambling on, and an
# old object named there would count against the edit); a chat answer may span lines. The first
# line is the first with text: an answer that opens on a new line ("Answer:\nPrague") is read
# from there (until 2026-12-07 the stop at "\n" cut it to nothing, judged as not holding)
STOPS = {"chat": ("\n\n",), "plain": ("\n",)}


@dataclass(frozen=True)
class FormAnswer:
    request: int
    form: str  # one of FORMS, or "portability"
    prompt: str  # as the model saw it (chat turns rendered)
    answer: str  # the greedy answer
    expected: str  # the object that counts as the edit holding (the new one, or a probe's target)
    unwanted: str | None  # the object that must be absent (the old one); None for portability
    subject: str = ""  # the edited subject: its name repeated in the answer names neither object

    @property
    def said(self) -> str:
        """The answer with the subject's name blanked out."""
        return blank_out(self.answer, self.subject)

    @property
    def holds(self) -> bool:
        said = self.said
        if not mentions(said, self.expected):
            return False
        # the old object inside the new one ("New York" in "New York City") is not the old object
        rest = re.sub(re.escape(self.expected), " ", said, flags=re.IGNORECASE)
        return not (self.unwanted and mentions(rest, self.unwanted))

    @property
    def says_old(self) -> bool:
        return bool(self.unwanted) and mentions(self.said, self.unwanted)


def form_prompts(tok, request: EditRequest) -> dict[str, list[int]]:
    """The token ids of each form the request can be asked in (chat needs a chat template,
    question a relation template)."""
    text = request.text
    question = question_template(request.relation_id)
    question = question.format(request.subject) if question else None
    out = {"prompt": list(tok(text)["input_ids"])}
    if getattr(tok, "chat_template", None):
        out["chat"] = question_prefix(tok, question or COMPLETE.format(text), Formatting(True, None))
    if question:
        out["question"] = list(tok(QUESTION.format(question))["input_ids"])
    out["in_context"] = list(tok(CONTEXT + text)["input_ids"])
    return out


def generation_answers(model, tok, requests: list[EditRequest], *, max_new_tokens: int = 32, batch_size: int = 32,
                       progress: bool = False) -> list[FormAnswer]:
    """Every form's and every portability probe's greedy answer, in one batched generation."""
    from ..core.scoring import generate

    rows, prompts = [], []
    for i, r in enumerate(requests):
        for form, ids in form_prompts(tok, r).items():
            rows.append((i, form, r.target_new, r.target_true, r.subject))
            prompts.append(ids)
        for probe in r.portability:
            rows.append((i, "portability", probe.target, None, ""))
            prompts.append(list(tok(probe.prompt)["input_ids"]))
    texts = [""] * len(rows)
    for kind, stops in STOPS.items():
        which = [j for j, row in enumerate(rows) if (row[1] == "chat") == (kind == "chat")]
        for j, text in zip(which, generate(model, tok, [prompts[j] for j in which], max_new_tokens=max_new_tokens,
                                           stop_strings=stops, batch_size=batch_size, progress=progress,
                                           desc=f"answering ({kind})", stop_after_text=True)):
            texts[j] = text
    return [FormAnswer(i, form, tok.decode(ids), text, expected, unwanted, subject)
            for (i, form, expected, unwanted, subject), ids, text in zip(rows, prompts, texts)]


def before_scores(before: list[FormAnswer]) -> dict:
    """What the "before" column shows: an edit's ``gen_<form>`` is 0 before it by definition
    (only answers with the old object count), so only the portability probes' share."""
    return {"portability": _portability(before)}


def _portability(answers: list[FormAnswer]) -> float | None:
    probes = [a for a in answers if a.form == "portability"]
    return sum(a.holds for a in probes) / len(probes) if probes else None


def generation_scores(after: list[FormAnswer], before: list[FormAnswer] | None = None) -> dict:
    """Per form, ``gen_<form>``: the share of answers where the edit holds, among the requests
    whose form the model answered with the old object before (all of them without ``before``),
    and ``gen_<form>_n``, how many that is; ``portability``: the share of probes answered with
    their expected answer."""
    answered_before = {(a.request, a.form) for a in before or [] if a.says_old}
    scores: dict = {}
    for form in FORMS:
        rows = [a for a in after if a.form == form and (before is None or (a.request, a.form) in answered_before)]
        scores[f"gen_{form}"] = sum(a.holds for a in rows) / len(rows) if rows else None
        scores[f"gen_{form}_n"] = len(rows)
    scores["portability"] = _portability(after)
    scores["portability_n"] = sum(a.form == "portability" for a in after)
    return scores
