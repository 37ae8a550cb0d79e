"""What unlearning trains on besides the items given: their other forms (``expand``) and, without
a ``--retain`` set, the facts closest to the forgotten ones (``protect_neighbours``).

Forgetting the sentence is not forgetting the fact: trained on "The Eiffel Tower is located in
the city of" alone, NPO still answered a plain ``Q:/A:``, a chat turn and in-context prompts
(``evals/results/audit_dev.md``). And the facts that suffer first are those sharing the
object or the relation ("the Louvre ... Paris"): a retain set of sampled text does not hold
them. So:

* ``expand: forms`` adds, per fact, the forms of ``core/forms.py`` (question, chat turn,
  subject first); per question, its plain form (the question, then the answer, without any
  template). ``forms+paraphrases`` also adds rephrasings the original model writes itself,
  kept only when the original still answers them with the object (they are the same fact).
  Given ``paraphrase_prompts`` are never trained on: they are the audit's paraphrase probe.
* ``protect_neighbours: n`` adds to the sampled retain text up to n shipped known facts per
  forgotten fact that share its object or relation, from the *training* half of the known
  facts (``core.known.known_pool``); the forget table and the evaluations draw neighbours
  from the other half, so nothing that judges forgetting was trained on.
"""
from __future__ import annotations

from ..core.forms import fact_forms
from .items import ForgetItem, neighbour_facts

EXPAND = ("none", "forms", "forms+paraphrases")
REPHRASE = "Say this in other words, as one sentence: {}"


def _subject_template(item: ForgetItem) -> tuple[str, str] | None:
    subject = item.extra.get("subject")
    if not subject or subject not in item.prompt:
        return None
    return subject, item.prompt.replace(subject, "{}", 1)


def derived_forms(items: list[ForgetItem], *, chat: bool) -> list[ForgetItem]:
    """The other forms of each item (not the items themselves), each marked with its form."""
    out = []
    for item in items:
        if item.kind == "fact":
            found = _subject_template(item)
            if found is None:
                continue
            subject, template = found
            for form in fact_forms(template, item.extra.get("relation_id"), chat=chat):
                text = form.template.replace("{}", subject, 1)
                extra = {"subject": subject, "form": form.name, "derived_from": item.prompt}
                if form.reply is not None:  # a chat turn whose answer starts with the sentence: a fact after it
                    extra["reply"] = form.reply.replace("{}", subject, 1)
                    out.append(ForgetItem("fact", text, item.answer, (), extra))
                else:
                    out.append(ForgetItem("qa" if form.chat else "fact", text, item.answer, (), extra))
        elif item.kind == "qa":
            out.append(ForgetItem("fact", item.prompt, item.answer, (),
                                  {"form": "plain_question", "derived_from": item.prompt}))
    return out


def model_paraphrases(model, tok, items: list[ForgetItem], *, max_new_tokens: int = 40) -> list[ForgetItem]:
    """Rephrasings of each fact written by the model itself (greedy, a chat turn), kept only
    when the object appears in them after the subject, and the original model, given the
    rephrasing cut just before the object, says the object again."""
    from ..core.scoring import generate
    from ..core.text import mentions

    facts = [x for x in items if x.kind == "fact" and _subject_template(x)]
    if not facts or not getattr(tok, "chat_template", None):
        return []
    from .items import Formatting, question_prefix

    prompts = [question_prefix(tok, REPHRASE.format(f"{x.prompt} {x.answer}."), Formatting()) for x in facts]
    written = generate(model, tok, prompts, max_new_tokens=max_new_tokens, stop_strings=("\n",))
    candidates = []
    for x, text in zip(facts, written):
        subject = x.extra["subject"]
        cut = text.find(x.answer)
        if cut <= 0 or subject not in text[:cut]:
            continue
        prompt = text[:cut].rstrip()
        if prompt and prompt != x.prompt:
            candidates.append(ForgetItem("fact", prompt, x.answer, (),
                                         {"subject": subject, "form": "model_paraphrase", "derived_from": x.prompt}))
    if not candidates:
        return []
    answers = generate(model, tok, [list(tok(c.prompt)["input_ids"]) for c in candidates], max_new_tokens=8)
    return [c for c, a in zip(candidates, answers) if mentions(a, c.answer)]


def expand_items(model, tok, items: list[ForgetItem], expand: str, *, chat: bool) -> list[ForgetItem]:
    """``items`` followed by their derived forms (``expand``: none, forms, forms+paraphrases)."""
    if expand not in EXPAND:
        raise ValueError(f"expand must be one of {', '.join(EXPAND)}, got {expand!r}")
    if expand == "none":
        return list(items)
    derived = derived_forms(items, chat=chat)
    if expand == "forms+paraphrases":
        derived += model_paraphrases(model, tok, items)
    return list(items) + derived


def protective_retain(items: list[ForgetItem], per_item: int) -> list[ForgetItem]:
    """Known facts sharing a forgotten fact's object or relation, from the training half."""
    if per_item <= 0:
        return []
    return neighbour_facts(items, per_item=per_item, pool="train")
