"""Derived training forms (core/forms.py, unlearning/expand.py, the erasers' ``expand``), kept
apart from the audit's probes, and the protective retain set kept apart from the neighbours
that judge forgetting."""
import json
from pathlib import Path

import pytest
import torch

from llm_edit.auditing.probes import PROBES, WORDINGS, probe_prompts
from llm_edit.core.forms import MQUAKE, TRAINING_QUESTIONS, cloze_template, fact_forms, question_template
from llm_edit.core.text import render
from llm_edit.unlearning.expand import derived_forms, expand_items, protective_retain
from llm_edit.core.known import known_pool
from llm_edit.unlearning.items import Formatting, neighbour_facts, parse_item, read_items

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "evals/data/forget_dev.jsonl"


def test_fact_forms_follow_the_relation():
    forms = {f.name: f for f in fact_forms("{} is located in the country of", "P17", chat=True)}
    assert forms["question"].template == "Which country is {} located in?" and not forms["question"].chat
    assert forms["chat_question"].chat and forms["chat_question"].template == forms["question"].template
    # the cloze sentence is the given prompt here, so no subject-first form repeats it
    assert "subject_first" not in forms and "chat_statement" not in forms
    # answered in a whole sentence: the question, then the assistant starts with the prompt
    assert forms["chat_reply"] == ("chat_reply", "Which country is {} located in?", True,
                                   "{} is located in the country of")
    forms = {f.name: f for f in fact_forms("The capital city of {} is", "P36", chat=False)}
    assert set(forms) == {"question", "subject_first"} and forms["subject_first"].template == "The capital of {} is"
    # no relation id: one chat turn that asks to finish the sentence
    form, reply = fact_forms("{} played the", None, chat=True)
    assert form.name == "chat_statement" and form.chat and "{} played the" in form.template
    assert reply.name == "chat_reply" and reply.template == form.template and reply.reply == "{} played the"
    assert fact_forms("{} played the", None, chat=False) == []


def test_templates_only_where_the_blank_ends_the_sentence():
    clozes = json.loads((MQUAKE / "cloze_templates.json").read_text())
    for relation, text in clozes.items():
        mine = cloze_template(relation)
        assert (mine is not None) == text.rstrip().endswith("__"), relation
        if mine:
            assert mine.count("{}") == 1 and not mine.endswith("__")
    assert question_template("P999999") is None and cloze_template(None) is None


def test_derived_forms_of_facts_and_questions():
    fact = parse_item({"prompt": "{} is located in the country of", "subject": "Osaka", "target": "Japan",
                       "relation_id": "P17", "paraphrase_prompts": ["Osaka is a city in the country of"]})
    qa = parse_item({"question": "Who wrote Hamlet?", "answer": "Shakespeare"})
    text = parse_item({"text": "Some passage."})
    derived = derived_forms([fact, qa, text], chat=True)
    assert [(x.kind, x.prompt, x.extra["form"]) for x in derived] == [
        ("fact", "Which country is Osaka located in?", "question"),
        ("qa", "Which country is Osaka located in?", "chat_question"),
        ("fact", "Which country is Osaka located in?", "chat_reply"),
        ("fact", "Who wrote Hamlet?", "plain_question")]
    assert derived[2].extra["reply"] == "Osaka is located in the country of"
    assert all(x.answer in ("Japan", "Shakespeare") for x in derived)
    # the given paraphrase is the audit's paraphrase probe: never a training form
    assert not any("Osaka is a city" in x.prompt for x in derived)
    assert expand_items(None, None, [fact], "none", chat=True) == [fact]
    with pytest.raises(ValueError, match="expand"):
        expand_items(None, None, [fact], "everything", chat=True)


def _training_texts(tok, items, chat):
    """What a derived form puts in front of the model, as text (chat forms through the template)."""
    out = []
    for x in derived_forms(items, chat=chat):
        if "reply" in x.extra:
            out.append(render(tok, "{}", x.prompt, chat=True)[0] + x.extra["reply"] + " " + x.answer)
        elif x.kind == "qa":
            out.append(render(tok, "{}", x.prompt, chat=True)[0] + x.answer)
        else:
            out.append(f"{x.prompt} {x.answer}")
    for item in items:  # the erasers' forms of the same facts
        if item.kind == "fact":
            template = item.prompt.replace(item.extra["subject"], "{}", 1)
            # and the insertions' own question wording (expand: forms, own_questions)
            for questions in ("mquake", "own"):
                for form in fact_forms(template, item.extra.get("relation_id"), chat=chat, questions=questions):
                    out.append(render(tok, form.template, item.extra["subject"], chat=form.chat,
                                      reply=form.reply)[0])
    return out


def test_no_training_form_holds_an_audit_probe(tiny):
    """The audit judges, it does not teach: no derived form (for every MQuAKE relation, facts
    with and without a relation id, questions) contains a probe's wording or equals a probe."""
    _, tok = tiny("llama")
    assert getattr(tok, "chat_template", None)
    relations = json.loads((MQUAKE / "question_templates.json").read_text()) | json.loads(
        TRAINING_QUESTIONS.read_text())
    items = [parse_item({"prompt": "{} is known for", "subject": f"Subject {i}", "target": "Object",
                         "relation_id": r}) for i, r in enumerate(relations)]
    items += read_items(DEV) + [parse_item({"prompt": "{} played the", "subject": "Jimi Hendrix", "target": "guitar"}),
                                parse_item({"question": "Who wrote Hamlet?", "answer": "Shakespeare"})]
    demos = [parse_item({"question": "Who wrote Emma?", "answer": "Jane Austen"})]
    probes = probe_prompts(tok, items, demos, Formatting())
    probe_texts = {tok.decode(ids) for p in PROBES if p not in ("direct", "paraphrase") for _, ids in probes[p]}
    # every wording is really used by some probe, so this list cannot drift out of date
    for wording in WORDINGS:
        assert any(wording in t for t in probe_texts), wording
    for chat in (True, False):
        for text in _training_texts(tok, items, chat):
            assert text not in probe_texts
            hits = [w for w in WORDINGS if w in text]
            assert not hits, (text, hits)


def test_protective_retain_and_judging_neighbours_never_share_a_subject():
    facts = read_items(DEV)
    protect = protective_retain(facts, 5)
    judge = neighbour_facts(facts, per_item=5)
    assert protect and judge
    assert all(known_pool(x.extra["subject"]) == "train" for x in protect)
    assert all(known_pool(x.extra["subject"]) == "eval" for x in judge)
    assert not {x.extra["subject"] for x in protect} & {x.extra["subject"] for x in judge}
    assert not {x.extra["subject"] for x in protect} & {x.extra["subject"] for x in read_items(
        ROOT / "evals/data/neighbours_dev.jsonl")}
    assert protective_retain(facts, 0) == []


def test_forget_trains_on_the_derived_forms_and_the_protective_retain(tiny):
    import llm_edit

    model, tok = tiny("llama")
    fact = {"prompt": "{} is located in the country of", "subject": "Osaka", "target": "Japan", "relation_id": "P17"}
    seen = []
    result = llm_edit.forget(model, tok, [fact], method="grad_diff", sets=["steps=1", "expand=forms",
                                                                          "protect_neighbours=2", "retain_samples=2",
                                                                          "max_length=128"],
                             progress=False, callback=lambda step, record, m: seen.append(step) and False)
    forms = result.manifest["derived_forms"]
    assert [x["extra"]["form"] for x in forms] == ["question", "chat_question", "chat_reply"]
    assert result.manifest["forget_items"] == 1 and len(result.manifest["protective_retain"]) >= 1
    assert "known facts sharing" in result.manifest["retain_source"]
    assert len(result._trainer.forget) == 4
    # the reply form's prompt: the chat question, then the sentence; the loss on the object only
    ids, start = result._trainer.encode(result._trainer.forget[3])
    assert tok.decode(ids[:start]).endswith("Osaka is located in the country of")
    assert tok.decode(ids[start:]).strip() == "Japan"
    result.unload()


def test_erasing_over_forms_keeps_v_init_and_changes_the_value(tiny):
    """Form rows join the objective, not the value's starting point (v_init, which the key
    average must match): v_init is the same with and without them (up to the float rounding
    of a batch padded to other widths)."""
    from llm_edit.core.arch import arch_of
    from llm_edit.core.forms import Form
    from llm_edit.editing.requests import EditRequest
    from llm_edit.editing.values import optimise_values

    model, tok = tiny("llama")
    request = EditRequest("{} is located in the country of", "Osaka", "", "Japan", relation_id="P17")
    module = arch_of(model).mlp_out.format(1)
    common = dict(steps=3, lr=0.5, kl_factor=0.0625, weight_decay=0.5, clamp_norm_factor=4.0,
                  kl_prompts=["{} is a"], nll_stop=0.05, objective="suppress", stop_prob=0.0)
    plain = optimise_values(model, tok, module, [request], ["{}", "A day. {}"], **common)[0]
    forms = [Form("question", "Which country is {} located in?", False), Form("chat_question",
                                                                             "Which country is {} located in?", True)]
    with_forms = optimise_values(model, tok, module, [request], ["{}", "A day. {}"], forms=[forms], **common)[0]
    assert torch.allclose(plain.initial, with_forms.initial, rtol=0, atol=1e-4)
    assert not torch.equal(plain.delta, with_forms.delta)
