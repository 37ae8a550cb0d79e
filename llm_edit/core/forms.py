"""The forms a fact is asked in, derived for *training* (unlearning's ``expand``, the erasers'
``erase_forms``): a fact given as "The Eiffel Tower is located in the city of" is also asked
as a question, as a chat turn and subject first. A change made on one sentence holds in that
sentence; people ask in these other forms (issue 20: forgotten facts still answered in chat
turns and plain Q/A).

Each ``Form`` is a template with ``{}`` for the subject, answered by the fact's object:

* ``question``: MQuAKE's question for the fact's Wikidata relation ("Which city is {} located
  in?"), as plain text (Zhong et al. 2023, ``data/mquake``); or, for insertions, whose edits
  MQuAKE's questions judge (``evaluating.edit_forms``), llm-edit's own wording of the question
  (``data/training_questions.json``: "In what country is {}?"), which no judge uses;
* ``chat_question``: the same question as a user turn through the model's chat template;
* ``subject_first``: MQuAKE's cloze sentence when its blank ends it ("{} is located in the
  country of"), unless it is the given prompt;
* ``chat_statement``: "Finish this sentence: <prompt>" as a user turn, for facts without a
  relation id (no question template), answered by the object;
* ``chat_reply``: the chat question (or the request to finish the sentence) answered in a
  whole sentence: the assistant's turn starts with the prompt, then the object, as instruct
  models usually answer.

The audit's probes (``auditing/probes.py``) are the judge and use none of these wordings;
``tests/test_audit.py`` checks that no derived form contains a probe's prompt.
"""
from __future__ import annotations

import functools
import json
from typing import NamedTuple

from .files import DATA_DIR

MQUAKE = DATA_DIR / "mquake"
# per-relation questions written for training only, worded unlike MQuAKE's (which judge edits) and
# unlike the audit's probes; tests/test_edit_forms.py and tests/test_forms.py check both
TRAINING_QUESTIONS = DATA_DIR / "training_questions.json"
QUESTION_SOURCES = ("mquake", "own", "none")
FINISH = "Finish this sentence: {}"


class Form(NamedTuple):
    name: str
    template: str  # holds "{}" for the subject; the object follows it (or follows ``reply``)
    chat: bool  # a user turn, to be wrapped in the model's chat template
    # chat forms: the assistant's answer starts with this, then the object; with "{}" the subject is
    # located there, else in the user's turn (``core.text.render``)
    reply: str | None = None


@functools.lru_cache(maxsize=None)
def _templates(path) -> dict[str, str]:
    return json.loads(path.read_text())


def question_template(relation_id: str | None) -> str | None:
    """MQuAKE's question for a relation, with ``{}`` for the subject (None when it has none)."""
    template = _templates(MQUAKE / "question_templates.json").get(relation_id or "")
    return template.replace("[X]", "{}") if template and "[X]" in template else None


def training_question(relation_id: str | None) -> str | None:
    """llm-edit's own question for a relation (``{}`` for the subject), or None."""
    return _templates(TRAINING_QUESTIONS).get(relation_id or "")


def cloze_template(relation_id: str | None) -> str | None:
    """MQuAKE's cloze sentence up to its blank, when the blank ends it ("{} is located in the
    country of"); None otherwise."""
    template = _templates(MQUAKE / "cloze_templates.json").get(relation_id or "")
    if not template or "[X]" not in template or not template.rstrip().endswith("__"):
        return None
    return template.rstrip()[:-2].rstrip().replace("[X]", "{}")


def fact_forms(prompt: str, relation_id: str | None, *, chat: bool, questions: str = "mquake") -> list[Form]:
    """The derived forms of a fact whose prompt template is ``prompt`` (with ``{}``); ``chat``:
    whether the model has a chat template. ``questions`` says whose question is asked:
    MQuAKE's (``mquake``), llm-edit's own (``own``) or none. Insertions never take MQuAKE's,
    which judges them (``evaluating.edit_forms``): an editor trained on it would be graded on
    its own training text."""
    if questions not in QUESTION_SOURCES:
        raise ValueError(f"questions must be one of {QUESTION_SOURCES}, got {questions!r}")
    forms = []
    question = (question_template(relation_id) if questions == "mquake"
                else training_question(relation_id) if questions == "own" else None)
    if question:
        forms.append(Form("question", question, False))
        if chat:
            forms.append(Form("chat_question", question, True))
    cloze = cloze_template(relation_id)
    if cloze and cloze.strip().lower() != prompt.strip().lower():
        forms.append(Form("subject_first", cloze, False))
    if chat and not question:
        forms.append(Form("chat_statement", FINISH.format(prompt), True))
    if chat:
        forms.append(Form("chat_reply", question or FINISH.format(prompt), True, prompt))
    return forms
