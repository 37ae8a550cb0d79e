"""What an erasure writes instead of a new fact: the options shared by every ``*-erase`` method.

An erasure is a locate-then-edit update whose target value, instead of making the model say
``target_new``, either makes the true object unlikely (``suppress``:
``objectives.object_unlikelihood`` with the method's KL and norm constraints) or makes the model say
``neutral_target`` (``neutral``). Only the value objective differs; keys, solve and patch are
the method's own, so erasures are audited, reverted and stacked like any edit.
"""
from __future__ import annotations

from dataclasses import dataclass

from ...core.forms import fact_forms
from ...core.text import blank_out


@dataclass
class EraseOptions:
    erase_objective: str = "suppress"  # suppress: make the object unlikely; neutral: say neutral_target
    neutral_target: str = "unknown"
    erase_stop_prob: float = 0.02  # suppress: stop once the object's probability is below this after every prompt
    # ``llm_edit.forget``: this many shipped known facts per forgotten fact that share its object or
    # relation (the training half, as unlearners' protect_neighbours) are kept where they are: their
    # keys go to the solve as preserved keys (``edit`` chooses them the same way when given none)
    protect_neighbours: int = 0
    # suppress: how many new tokens of the model's own greedy answer to the fact's prompt and each
    # derived form are read (0: off). Where the answer names the object after a lead-in ("the
    # German language"), that form continued by the lead-in is one more prompt the object must
    # become unlikely after (``lead_in_forms``)
    erase_lead_in_tokens: int = 0
    # rounds of erasure: after a round, the facts whose greedy answer (``ROUND_CHECK_TOKENS`` new
    # tokens) to their prompt or to a derived form still names the object are erased again, on the
    # model as now edited (``unheld``); 1: one round, as every erasure before it was an option
    erase_rounds: int = 1

    def validate_erase(self) -> None:
        if self.erase_objective not in ("suppress", "neutral"):
            raise ValueError(f"erase_objective must be 'suppress' or 'neutral', got {self.erase_objective!r}")
        if not 0 < self.erase_stop_prob < 1:
            raise ValueError("erase_stop_prob must be between 0 and 1")
        if not self.neutral_target.strip():
            raise ValueError("neutral_target must not be empty")
        if getattr(self, "own_questions", False):
            raise ValueError("own_questions is for insertions: an erasure's forms already ask MQuAKE's questions")
        if getattr(self, "insert_lead_in_tokens", 0):
            raise ValueError("insert_lead_in_tokens is for insertions: an erasure's lead-ins are erase_lead_in_tokens")
        if getattr(self, "insert_rounds", 1) != 1:
            raise ValueError("insert_rounds is for insertions: an erasure's rounds are erase_rounds")
        if self.protect_neighbours < 0:
            raise ValueError("protect_neighbours must be >= 0")
        if self.erase_lead_in_tokens < 0:
            raise ValueError("erase_lead_in_tokens must be >= 0")
        if self.erase_rounds < 1:
            raise ValueError("erase_rounds must be >= 1")


def value_objective(config, requests: list, tok=None, model=None) -> dict:
    """Keyword arguments of ``values.optimise_values`` for ``config``'s objective: ROME/MEMIT's
    insertion of ``target_new`` unless the config is an erasure's; with ``expand: forms``, each
    request's derived forms (``core.forms``: an erasure's include MQuAKE's questions, an
    insertion's do not, since they judge insertions in ``evaluating.edit_forms``; with
    ``own_questions`` an insertion's include llm-edit's own question wording instead); with
    ``erase_lead_in_tokens`` (a suppression) or ``insert_lead_in_tokens`` (an insertion) and
    ``model``, the lead-in forms too (``lead_in_forms``)."""
    erase = isinstance(config, EraseOptions)
    chat = bool(getattr(tok, "chat_template", None))
    out: dict = {"objective": "insert"}
    if erase:
        out["targets"] = [config.neutral_target] * len(requests)
        if config.erase_objective == "suppress":
            out = {"objective": "suppress", "stop_prob": config.erase_stop_prob}
    if config.expand == "forms":
        questions = "mquake" if erase else "own" if config.own_questions else "none"
        out["forms"] = [fact_forms(r.prompt, r.relation_id, chat=chat, questions=questions) for r in requests]
    if erase and out["objective"] == "suppress" and config.erase_lead_in_tokens > 0 and model is not None:
        forms = out.get("forms") or [[] for _ in requests]
        extra = lead_in_forms(model, tok, requests, forms, config.erase_lead_in_tokens)
        out["forms"] = [f + e for f, e in zip(forms, extra)]
    if not erase and config.insert_lead_in_tokens > 0 and model is not None:
        forms = out.get("forms") or [[] for _ in requests]
        # the model is also asked llm-edit's own question (never the judge's, MQuAKE's): how it
        # answers a question is where an insertion held least (issue 21); only the lead-ins it
        # finds are trained, the bare question only with own_questions
        asked = [f + [q for q in fact_forms(r.prompt, r.relation_id, chat=chat, questions="own")
                      if q.name in ("question", "chat_question") and q not in f]
                 for r, f in zip(requests, forms)]
        extra = lead_in_forms(model, tok, requests, asked, config.insert_lead_in_tokens,
                              max_words=INSERT_LEAD_IN_WORDS)
        out["forms"] = [f + e for f, e in zip(forms, extra)]
    return out


# An insertion's lead-in is kept when it is this short (words besides the subject) and is one
# clause: a longer or punctuated one ("created in 2012, is a renowned") is the model wandering, and
# the new object trained after it would be said in the wrong place. A suppression keeps every
# lead-in: making the object unlikely after a wandering one does no harm.
INSERT_LEAD_IN_WORDS = 6


def lead_in_forms(model, tok, requests: list, forms: list[list], max_new_tokens: int,
                  max_words: int | None = None) -> list[list]:
    """For each request, the forms in which the model (as it is now) names the object only after
    a lead-in: its greedy answer (``max_new_tokens``) to the fact's prompt and to each of
    ``forms`` is read, and where the object first appears after some words (" the German
    language", "Islam" after a sentence about the subject), the form continued by those words is
    returned (named ``<form>+lead_in``; a chat form's reply gains them). The object is looked for
    outside the subject's name ("Toyota" in "The Toyota RAV4 is …" is the subject, not the object).
    With ``max_words``, only lead-ins of at most that many words besides the subject, without
    sentence punctuation, and (chat) with the subject in the reply are kept.

    Why: suppression makes the object unlikely right after each prompt, but the audit counts a
    fact as answered when the object appears anywhere in the answer, and a small model often
    says it a few words in. These lead-ins come from the training forms (``core.forms``) and the
    model's own words, never from the audit's probes."""
    from ...core.forms import Form
    from ...core.text import first_mention

    out: list[list] = [[] for _ in requests]
    for i, form, answer in _greedy_answers(model, tok, requests, forms, max_new_tokens):
        subject = requests[i].subject
        at = first_mention(blank_out(answer, subject), requests[i].target_true)
        lead = answer[:at].rstrip() if at else ""
        if not lead.strip() or "{" in lead or "}" in lead:  # said first (the form covers it), or never
            continue
        if max_words is not None and not _short_clause(lead, subject, max_words):
            continue
        name = form.name + "+lead_in"
        if not form.chat:
            out[i].append(Form(name, form.template + lead, False))
            continue
        reply = form.reply or ""
        if "{}" not in reply and subject in lead:  # δ enters at the subject nearest the object, as chat_reply's
            k = lead.rindex(subject)
            lead = lead[:k] + "{}" + lead[k + len(subject):]
        if max_words is not None and "{}" not in reply + lead:
            continue
        out[i].append(Form(name, form.template, True, reply + lead))
    return out


# New tokens read when checking whether a round's edits hold: the audit reads at least 16, the
# lead-ins 24 (a small model often names the object a few words in).
ROUND_CHECK_TOKENS = 24


def unheld(model, tok, requests: list, config) -> list[int]:
    """Indices of the ``requests`` whose change does not yet hold in the model as it is now: asked
    its prompt and its derived training forms (``core.forms``, as ``value_objective`` derives them
    with ``expand: forms``; an insertion's own question with ``own_questions``), the greedy answer
    (``ROUND_CHECK_TOKENS``) still names the object, outside the subject's name (an erasure), or
    does not name the new object or still names the old one (an insertion), in at least one form.

    Why: a round's values stop once the objective is met at the edited layer's δ, but the update
    writes only part of δ (MEMIT spreads it, and a batch's updates move each other's keys; a chat
    turn's key is not the prompt's), so some facts do not hold afterwards while others hold with
    room to spare; those get another round instead of every fact a harder one. Only training forms
    are asked: never the file's paraphrases, MQuAKE's questions for insertions, or the audit's
    probes, which judge."""
    from ...core.text import mentions

    erase = isinstance(config, EraseOptions)
    forms = value_objective(config, requests, tok).get("forms") or [[] for _ in requests]  # without lead-ins

    def holds(request, answer: str) -> bool:
        answer = blank_out(answer, request.subject)
        if erase:
            return not mentions(answer, request.target_true)
        # the old object is looked for outside the new one ("York" inside "New York" is not York)
        old = bool(request.target_true) and mentions(blank_out(answer, request.target_new), request.target_true)
        return mentions(answer, request.target_new) and not old

    return sorted({i for i, _, answer in _greedy_answers(model, tok, requests, forms, ROUND_CHECK_TOKENS)
                   if not holds(requests[i], answer)})


def _greedy_answers(model, tok, requests: list, forms: list[list], max_new_tokens: int):
    """(request index, form, greedy answer) for each request's prompt and each of its ``forms``,
    generated in one batched call."""
    from ...core.forms import Form
    from ...core.scoring import generate
    from ...core.text import encode_with_subject

    asked = [(i, form) for i, r in enumerate(requests)
             for form in [Form("prompt", r.prompt, False), *forms[i]]]
    prompts = [encode_with_subject(tok, form.template, requests[i].subject, chat=form.chat, reply=form.reply)[0]
               for i, form in asked]
    answers = generate(model, tok, prompts, max_new_tokens=max_new_tokens)
    return [(i, form, answer) for (i, form), answer in zip(asked, answers)]


def _short_clause(lead: str, subject: str, max_words: int) -> bool:
    rest = blank_out(lead, subject)
    return len(rest.split()) <= max_words and not any(c in rest for c in ",.!?:;\n\"")


def lead_in_record(objective: dict, i: int) -> dict:
    """Request i's lead-in forms as the manifest records them (nothing when it has none)."""
    forms = objective.get("forms")
    found = [[f.name, f.template, f.reply] for f in (forms[i] if forms else []) if f.name.endswith("+lead_in")]
    return {"lead_in_forms": found} if found else {}
