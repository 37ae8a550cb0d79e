"""Erasure by rank-one edits (rome-erase) on tiny random models, the unlikelihood objective,
and ``layer: auto`` from causal tracing."""
import math

import pytest
import torch

import llm_edit
from llm_edit.locating import average
from llm_edit.editing.objectives import object_unlikelihood
from llm_edit.evaluating.metrics import target_logprob
from llm_edit.core.models import fingerprint

from conftest import LAYOUTS

FACT = {"prompt": "{} is in", "subject": "Eiffel Tower", "target": "Paris", "paraphrase_prompts": ["Eiffel Tower lies in"]}


def p_object(model, tok, prompt="Eiffel Tower is in", target="Paris"):
    return target_logprob(model, tok, [prompt], [target]).exp().item()


def top_word(model, tok, prompt="Eiffel Tower is in"):
    """The random model's most likely next *word* (a space-led token that round-trips): the one
    thing it "knows" about the prompt, and so something to erase."""
    with torch.no_grad():
        probs = model(**tok(prompt, return_tensors="pt")).logits[0, -1].softmax(-1)
    for i in probs.argsort(descending=True).tolist():
        text = tok.decode([i])
        if text.startswith(" ") and text.strip() and tok(text, add_special_tokens=False)["input_ids"] == [i]:
            return text.strip()
    raise AssertionError("no word token")


def test_object_unlikelihood_closed_form():
    p = torch.tensor([0.5, 0.1])
    expected = -(math.log(0.5) + math.log(0.9)) / 2
    assert math.isclose(object_unlikelihood(p.log()).item(), expected, rel_tol=1e-6)
    assert object_unlikelihood(torch.tensor([-50.0])).item() < 1e-20  # flat once the object is unlikely


# On tiny-gemma3's random weights the most likely next word copies a prompt token (" in"): an
# attention path no MLP edit removes (measured: 0.29 -> 0.20 however many steps or whatever step
# size). The multimodal layout's paths are covered by the other LAYOUTS tests and test_rome.py.
@pytest.mark.parametrize("model_type", [t for t in LAYOUTS if t != "gemma3"])
def test_rome_erase_lowers_the_object_and_unload_is_exact(tiny, model_type):
    model, tok = tiny(model_type)
    word = top_word(model, tok)
    fp, before = fingerprint(model), p_object(model, tok, target=word)
    result = llm_edit.forget(model, tok, [dict(FACT, target=word)], method="rome-erase", progress=False)
    assert result.adapter is None and result.delta is not None
    assert p_object(model, tok, target=word) < 0.5 * before
    assert result.manifest["layer"] == 1 and result.manifest["forget_items"] == 1
    result.unload()
    assert fingerprint(model) == fp


def test_neutral_objective_raises_the_neutral_target(tiny):
    model, tok = tiny("llama")
    before = p_object(model, tok, target="unknown")
    llm_edit.forget(model, tok, [FACT], method="rome-erase", erase_objective="neutral", progress=False)
    assert p_object(model, tok, target="unknown") > 1.5 * before


def test_erasure_needs_facts_and_validates_keys(tiny):
    model, tok = tiny("llama")
    with pytest.raises(ValueError, match="needs facts"):
        llm_edit.forget(model, tok, [{"question": "Who?", "answer": "Me."}], method="rome-erase", progress=False)
    with pytest.raises(llm_edit.core.config.ConfigError, match="erase_objective"):
        llm_edit.forget(model, tok, [FACT], method="rome-erase", erase_objectiv="neutral", progress=False)
    with pytest.raises(llm_edit.core.config.ConfigError, match="suppress"):
        llm_edit.forget(model, tok, [FACT], method="rome-erase", erase_objective="forget", progress=False)


def test_erasure_saves_model_and_patch(tmp_path, tiny):
    model, tok = tiny("llama")
    fresh, _ = tiny("llama")
    result = llm_edit.forget(model, tok, [FACT], method="rome-erase", progress=False)
    result.save(tmp_path / "out")
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"model.safetensors", "patch.safetensors", "llm_edit_manifest.json"} <= names
    llm_edit.load_patch(tmp_path / "out" / "patch.safetensors").apply(fresh)
    edited = model.state_dict()
    assert all(torch.equal(v, edited[k]) for k, v in fresh.state_dict().items())


def test_layer_auto_takes_the_traced_peak(tiny, monkeypatch):
    """``layer: auto`` resolves through locating.average.auto_layers and is recorded in the manifest. A
    random model answers no known fact, so the average here is over facts regardless."""
    model, tok = tiny("gpt2")
    facts = [{"prompt": "{} is in", "subject": "Eiffel Tower", "target": "Paris"},
             {"prompt": "{} is a city in", "subject": "Osaka", "target": "Japan"}]
    avg = average.trace_facts(model, tok, facts, samples=2, only_correct=False, progress=False, use_cache=False)

    def fake_auto(model, tok, n=1, progress=True):
        return avg.layers(n), {"rule": "test", "layers": avg.layers(n)}

    monkeypatch.setattr(average, "auto_layers", fake_auto)
    result = llm_edit.forget(model, tok, [FACT], method="rome-erase", layer="auto", progress=False)
    assert result.manifest["layer"] == avg.peak("mlp")
    assert result.manifest["hyperparameters"]["layer"] == "auto"
    assert result.manifest["located"]["layers"] == [avg.peak("mlp")]
    with pytest.raises(llm_edit.core.config.ConfigError, match="auto"):
        llm_edit.forget(model, tok, [FACT], method="rome-erase", layer="peak", progress=False)


def test_rmu_layer_auto_is_resolved_before_training(tiny, monkeypatch):
    model, tok = tiny("llama")
    monkeypatch.setattr(average, "auto_layers", lambda model, tok, n=1, progress=True: ([0], {"layers": [0]}))
    result = llm_edit.forget(model, tok, [FACT], [{"text": "Some other text to keep."}], method="rmu",
                             layer="auto", steps=1, progress=False)
    assert result.manifest["hyperparameters"]["layer"] == 0
    assert result.manifest["located"] == {"layers": [0], "requested": "auto"}


def test_memit_erase_keeps_protected_neighbours_by_preserved_keys(tiny):
    """``protect_neighbours`` with an eraser: the known facts closest to the forgotten one go to
    the solve as preserved keys (manifest: ``protective_retain`` and ``preserved``, the same
    subjects); an eraser without preserved keys refuses the key before any work."""
    model, tok = tiny("llama")
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    result = llm_edit.forget(model, tok, [FACT], method="memit-erase", layers=[1, 2], protect_neighbours=2,
                             progress=False)
    protective = [x["extra"]["subject"] for x in result.manifest["protective_retain"]]
    assert len(protective) == 2
    assert [r["subject"] for r in result.manifest["preserved"]] == protective
    assert "preserved keys" in result.manifest["retain_source"]
    result.unload()
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())
    result = llm_edit.forget(model, tok, [FACT], method="rome-erase", layer=1, protect_neighbours=2, progress=False)
    assert [r["subject"] for r in result.manifest["preserved"]] == protective  # ROME's solve preserves too
    result.unload()
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])  # not gemma3: see the rome-erase test above
def test_alphaedit_erase_lowers_the_object_keeps_later_batches_off_earlier_keys_and_unloads(tiny, model_type):
    """alphaedit-erase: the object made less likely, one AlphaEdit batch after another (the second
    batch's solve sees the first's keys in its memory), the protected facts' keys in the solve;
    the whole erasure unloads bit for bit."""
    from llm_edit.editing.methods import alphaedit

    model, tok = tiny(model_type)
    word = top_word(model, tok)
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    before = p_object(model, tok, target=word)
    grams = []
    solve = alphaedit.null_space_update

    def spy(residuals, keys, projector, gram, alpha):
        grams.append(None if gram is None else gram.clone())
        return solve(residuals, keys, projector, gram, alpha)

    other = {"prompt": "{} is located in", "subject": "Colosseum", "target": "Rome"}
    alphaedit.null_space_update = spy
    try:
        result = llm_edit.forget(model, tok, [dict(FACT, target=word), other], method="alphaedit-erase",
                                 batch_size=1, protect_neighbours=2, progress=False)
    finally:
        alphaedit.null_space_update = solve
    assert p_object(model, tok, target=word) < 0.5 * before
    assert len(result.manifest["preserved"]) >= 2 and result.manifest["forget_items"] == 2
    assert len(grams) == 2 and grams[0] is not None  # the protected keys from the first batch on
    assert torch.linalg.matrix_rank(grams[1]) > torch.linalg.matrix_rank(grams[0])  # plus the first batch's key
    result.unload()
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())


def test_a_plain_edit_with_protect_neighbours_preserves_the_closest_known_facts_of_the_training_half(tiny):
    """Without ``preserve``, ``protect_neighbours`` n makes ``edit`` itself choose the known facts
    sharing each request's old object or relation (the training half, never the half that judges),
    as ``forget`` does for an erasure; an explicit ``preserve`` list, even empty, is the caller's."""
    from llm_edit.core.known import known_pool
    from llm_edit.editing.edit import preserved_neighbours
    from llm_edit.editing.requests import parse_request

    model, tok = tiny("llama")
    request = {"prompt": "{} is located in the city of", "subject": "Eiffel Tower", "target_new": "Rome",
               "target_true": "Paris"}
    chosen, owners = preserved_neighbours([parse_request(request)], 3)
    assert owners == {parse_request(request): (0, 1, 2)}
    assert len(chosen) == 3 and all(known_pool(r.subject) == "train" for r in chosen)
    assert all(r.target_true == "Paris" for r in chosen)  # the old object first: another landmark of Paris
    for method, kw in (("rome", {"layer": 1}), ("memit", {"layers": [1, 2]})):
        result = llm_edit.edit(model, tok, [request], method, protect_neighbours=3, progress=False, **kw)
        assert [r["subject"] for r in result.manifest["preserved"]] == [r.subject for r in chosen]
        result.revert()
        result = llm_edit.edit(model, tok, [request], method, protect_neighbours=3, preserve=[], progress=False,
                               **kw)
        assert "preserved" not in result.manifest
        result.revert()


def test_lead_in_forms_continue_each_form_up_to_where_the_answer_names_the_object(tiny, monkeypatch):
    """The model's own answers (here given) decide: a form whose answer names the object after some
    words gains a continuation up to them; one that names it first, or never, gains nothing; a
    chat form's reply gains them, with the subject templated where the reply repeats it."""
    from llm_edit.core import scoring
    from llm_edit.core.forms import Form
    from llm_edit.editing.methods.erase import lead_in_forms
    from llm_edit.editing.requests import EditRequest

    _, tok = tiny("llama")
    request = EditRequest("The original language of {} is", "Die Nibelungen", "", target_true="German")
    forms = [Form("question", "Which language was {} written in?", False),
             Form("chat_question", "Which language was {} written in?", True),
             Form("chat_reply", "Which language was {} written in?", True, "The original language of {} is"),
             Form("subject_first", "{} was written in", False)]
    answers = {"prompt": " the German language.", "question": " German.",
               "chat_question": "The original language of Die Nibelungen is German.",
               "chat_reply": " a mix, mostly German", "subject_first": " the 13th century."}
    asked = []

    def fake_generate(model, tok_, prompts, max_new_tokens):
        asked.append(max_new_tokens)
        assert len(prompts) == len(answers)
        return list(answers.values())

    monkeypatch.setattr(scoring, "generate", fake_generate)
    (found,) = lead_in_forms(None, tok, [request], [forms], 12)
    assert asked == [12]
    assert found == [
        Form("prompt+lead_in", "The original language of {} is the", False),
        Form("chat_question+lead_in", "Which language was {} written in?", True, "The original language of {} is"),
        Form("chat_reply+lead_in", "Which language was {} written in?", True,
             "The original language of {} is a mix, mostly")]
    # a plain reply continues the assistant's turn and leaves the subject in the user's
    from llm_edit.core.text import render

    text, start, end, _ = render(tok, "Which language was {} written in?", "Die Nibelungen", chat=True,
                                 reply="It is")
    assert text.endswith("It is") and text[start:end] == "Die Nibelungen" and start < text.index("It is")


def test_rome_erase_with_lead_ins_makes_the_object_unlikely_after_them(tiny, monkeypatch):
    """Where the model's answer (given here: a random model's text has no words to find) names the
    object after a lead-in, erase_lead_in_tokens also trains after the lead-in, records it, and
    leaves the object after it less likely than an erasure without lead-ins does."""
    from llm_edit.core import scoring

    model, tok = tiny("llama")
    lead = " and so on, it is in"
    after_lead = "Eiffel Tower is in" + lead
    target = top_word(model, tok, after_lead)  # what this random model "says" after the lead-in
    monkeypatch.setattr(scoring, "generate", lambda model, tok, prompts, max_new_tokens: [f"{lead} {target}."])
    fact = dict(FACT, target=target)
    before = p_object(model, tok, after_lead, target)
    plain = llm_edit.forget(model, tok, [fact], method="rome-erase", progress=False)
    p_plain = p_object(model, tok, after_lead, target)
    plain.unload()
    led = llm_edit.forget(model, tok, [fact], method="rome-erase", erase_lead_in_tokens=8, progress=False)
    (info,) = led.log
    assert info["lead_in_forms"] == [["prompt+lead_in", "{} is in" + lead, None]]
    assert p_object(model, tok, after_lead, target) < min(p_plain, 0.5 * before)


def test_an_insertions_lead_ins_look_past_the_subject_and_keep_only_short_clauses(tiny, monkeypatch):
    """The object inside the subject's name ("Toyota" in "Toyota RAV4") is not where the answer
    names it; with max_words (insertions) a lead-in that wanders (punctuated, long, or a chat reply
    without the subject) is dropped, while a suppression (no max_words) keeps it."""
    from llm_edit.core import scoring
    from llm_edit.core.forms import Form
    from llm_edit.editing.methods.erase import lead_in_forms
    from llm_edit.editing.requests import EditRequest

    _, tok = tiny("llama")
    request = EditRequest("{} is made by", "Toyota RAV4", "Honda", target_true="Toyota")
    forms = [Form("chat_statement", "Finish this sentence: {} is made by", True),
             Form("chat_question", "Which company makes {}?", True),
             Form("question", "Which company makes {}?", False),
             Form("subject_first", "{} was made by", False)]
    answers = [" Toyota.", "The Toyota RAV4 is made by Toyota.", "Toyota RAV4, since 1994, is made by Toyota",
               " a compact SUV made by the Japanese company Toyota", " the Japanese company Toyota"]
    monkeypatch.setattr(scoring, "generate", lambda model, tok_, prompts, max_new_tokens: answers)
    (kept,) = lead_in_forms(None, tok, [request], [forms], 24, max_words=6)
    assert kept == [Form("chat_statement+lead_in", "Finish this sentence: {} is made by", True, "The {} is made by"),
                    Form("subject_first+lead_in", "{} was made by the Japanese company", False)]
    (every,) = lead_in_forms(None, tok, [request], [forms], 24)
    assert [f.name for f in every] == ["chat_statement+lead_in", "chat_question+lead_in", "question+lead_in",
                                       "subject_first+lead_in"]
    assert every[1].reply == "{}, since 1994, is made by"


def test_rome_keeps_each_requests_own_neighbours_and_all_of_a_given_list(tiny, monkeypatch):
    """With neighbours chosen by ``edit``, each rank-one solve preserves its request's own keys
    (two requests, two each: two different pairs); a ``preserve`` list given by the caller is
    preserved by every request's solve."""
    from llm_edit.editing import rank_one
    from llm_edit.editing.methods import rome

    seen = []
    real = rank_one.rank_one_update

    def spy(residual, key, cov, preserved=None, preserve_weight=0.0):
        seen.append(None if preserved is None else preserved.clone())
        return real(residual, key, cov, preserved, preserve_weight)

    monkeypatch.setattr(rome, "rank_one_update", spy)
    model, tok = tiny("llama")
    requests = [{"prompt": "{} is located in the city of", "subject": "Eiffel Tower", "target_new": "Rome",
                 "target_true": "Paris"},
                {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "target_new": "English",
                 "target_true": "French"}]
    result = llm_edit.edit(model, tok, requests, "rome", layer=1, protect_neighbours=2, progress=False)
    assert [len(p) for p in seen] == [2, 2] and not torch.equal(seen[0], seen[1])
    assert len(result.manifest["preserved"]) == 4
    result.revert()
    seen.clear()
    given = [{"prompt": "{} is located in the city of", "subject": "Louvre"}]
    llm_edit.edit(model, tok, requests, "rome", layer=1, preserve=given, progress=False).revert()
    assert [len(p) for p in seen] == [1, 1] and torch.equal(seen[0], seen[1])


def test_unheld_names_the_erasures_whose_training_forms_still_name_the_object(tiny, monkeypatch):
    """Given answers decide: a fact whose answer to its prompt or a derived form names the object
    (outside the subject's name) is still said; the object inside the subject is not; the file's
    paraphrases are never asked (they judge), only the prompt and the derived forms."""
    from llm_edit.core import scoring
    from llm_edit.core.forms import fact_forms
    from llm_edit.editing.methods.erase import ROUND_CHECK_TOKENS, unheld
    from llm_edit.editing.methods.memit import MEMITEraseConfig
    from llm_edit.editing.requests import EditRequest

    _, tok = tiny("llama")
    requests = [EditRequest("{} is located in the city of", "Louvre", "", target_true="Paris", relation_id="P131",
                            paraphrase_prompts=("The Louvre stands in",)),
                EditRequest("{} is made by", "Toyota RAV4", "", target_true="Toyota"),
                EditRequest("{} was written in", "Die Nibelungen", "", target_true="German")]
    chat = bool(tok.chat_template)
    n_forms = [1 + len(fact_forms(r.prompt, r.relation_id, chat=chat)) for r in requests]
    assert n_forms[0] > 1  # the relation's question forms are asked too
    prompts_seen = []

    def fake_generate(model, tok_, prompts, max_new_tokens):
        assert max_new_tokens == ROUND_CHECK_TOKENS
        prompts_seen.extend(tok.decode(p) for p in prompts)
        answers = [" nowhere in particular."] * len(prompts)
        answers[n_forms[0] - 1] = " a building, in Paris."  # the Louvre's last form
        answers[n_forms[0]] = " the Toyota RAV4 company."  # only the subject's own name
        answers[n_forms[0] + n_forms[1]] = " Germanic verse"  # a form of the object counts
        return answers

    monkeypatch.setattr(scoring, "generate", fake_generate)
    config = MEMITEraseConfig(expand="forms")
    assert unheld(None, tok, requests, config) == [0, 2]
    assert len(prompts_seen) == sum(n_forms)
    assert not any("stands in" in p for p in prompts_seen)
    from llm_edit.core.forms import question_template
    assert any(question_template("P131").format("Louvre") in p for p in prompts_seen)  # an erasure's forms ask MQuAKE's
    config = MEMITEraseConfig(expand="none")  # without forms only each prompt is asked
    prompts_seen.clear()
    monkeypatch.setattr(scoring, "generate", lambda m, t, prompts, max_new_tokens: [" Paris"] * len(prompts))
    assert unheld(None, tok, requests, config) == [0]


def test_erase_rounds_erase_again_only_what_is_unheld_and_unload_all_rounds(tiny, monkeypatch):
    """erase_rounds 4: round 2 erases again the facts ``unheld`` names (one batch more, recorded in
    the manifest), round 3 asks only those and erases again the one still said, and the check
    before round 4 finds none and stops; unloading undoes every round bit for bit. A failure after
    a later round's patch leaves the model as it was."""
    from llm_edit.editing.methods import erase

    model, tok = tiny("llama")
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    facts = [FACT, dict(FACT, subject="Louvre", target="Paris")]
    asked = []

    def fake_unheld(model_, tok_, requests, config):
        asked.append([r.subject for r in requests])
        return [[1], [0], []][len(asked) - 1]  # indices into the requests asked

    monkeypatch.setattr(erase, "unheld", fake_unheld)
    result = llm_edit.forget(model, tok, facts, method="memit-erase", layers=[1, 2], batch_size=1, erase_rounds=4,
                             progress=False)
    assert asked == [["Eiffel Tower", "Louvre"], ["Louvre"], ["Louvre"]]
    again, third = result.manifest["later_rounds"]
    assert again["round"] == 2 and again["requests"] == [1] and len(again["per_request"]) == 1
    assert third["round"] == 3 and third["requests"] == [1]
    assert len(result.delta.manifest["per_request"]) == 2
    result.unload()
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())

    one_round = llm_edit.forget(model, tok, facts, method="memit-erase", layers=[1, 2], batch_size=1,
                                progress=False)
    assert "later_rounds" not in one_round.manifest and len(asked) == 3  # 1 round: nothing asked
    one_round.unload()

    calls = []

    def failing(*args):  # the first check names a fact; the second, after round 2's patch, fails
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return [0]

    monkeypatch.setattr(erase, "unheld", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        llm_edit.forget(model, tok, facts, method="memit-erase", layers=[1, 2], batch_size=1, erase_rounds=3,
                        progress=False)
    assert len(calls) == 2
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())
    with pytest.raises(Exception, match="erase_rounds"):
        llm_edit.forget(model, tok, facts, method="memit-erase", erase_rounds=0, progress=False)
    with pytest.raises(Exception, match="insert_rounds is for insertions"):
        llm_edit.forget(model, tok, facts, method="memit-erase", insert_rounds=2, progress=False)


def test_unheld_names_the_insertions_that_do_not_yet_say_the_new_object(tiny, monkeypatch):
    """An insertion holds in a form when the answer names the new object and not the old one
    (outside the subject's name); with own_questions llm-edit's own question is asked, never
    MQuAKE's (which judges insertions)."""
    from llm_edit.core import scoring
    from llm_edit.core.forms import fact_forms
    from llm_edit.editing.methods.erase import unheld
    from llm_edit.editing.methods.rome import ROMEConfig
    from llm_edit.editing.requests import EditRequest

    _, tok = tiny("llama")
    requests = [EditRequest("{} is located in the city of", "Louvre", "Rome", target_true="Paris", relation_id="P131"),
                EditRequest("{} is located in the city of", "Colosseum", "Paris", target_true="Rome",
                            relation_id="P131"),
                EditRequest("{} is located in the city of", "Rome Termini", "Milan", target_true="Rome",
                            relation_id="P131")]
    config = ROMEConfig(expand="forms", own_questions=True)
    chat = bool(tok.chat_template)
    forms = fact_forms(requests[0].prompt, "P131", chat=chat, questions="own")
    assert any(f.name == "question" for f in forms)
    n = 1 + len(forms)
    seen = []

    def fake_generate(model, tok_, prompts, max_new_tokens):
        seen.extend(tok.decode(p) for p in prompts)
        answers = [" Rome, Italy."] * n + [" Paris."] * n + [" Milan."] * n
        answers[n + 1] = " Paris, not Rome."  # the Colosseum's first form still names the old object
        answers[2 * n + 2] = " the Rome Termini station, Milan"  # the old object only in the subject's name
        return answers

    monkeypatch.setattr(scoring, "generate", fake_generate)
    assert unheld(None, tok, requests, config) == [1]
    assert len(seen) == 3 * n
    from llm_edit.core.forms import question_template
    mquake = question_template("P131").format("Louvre")
    assert not any(mquake in p for p in seen)
    monkeypatch.setattr(scoring, "generate", lambda m, t, prompts, max_new_tokens: [" Naples."] * len(prompts))
    assert unheld(None, tok, requests, config) == [0, 1, 2]  # the new object said nowhere
    york = [EditRequest("{} is located in the city of", "Flatiron Building", "New York", target_true="York",
                        relation_id="P131")]
    monkeypatch.setattr(scoring, "generate", lambda m, t, prompts, max_new_tokens: [" New York City."] * len(prompts))
    assert unheld(None, tok, york, config) == []  # "York" inside the new "New York" is not the old object
    monkeypatch.setattr(scoring, "generate", lambda m, t, prompts, max_new_tokens: [" New York, not York."] * len(prompts))
    assert unheld(None, tok, york, config) == [0]


def test_insert_rounds_edit_again_what_does_not_hold_and_revert_all_rounds(tiny, monkeypatch):
    """insert_rounds 2 with ROME: the request ``unheld`` names gets a second edit (one more patch,
    recorded in the manifest); revert undoes both bit for bit."""
    from llm_edit.editing.methods import erase

    model, tok = tiny("llama")
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    facts = [{"prompt": "{} is in", "subject": "Eiffel Tower", "target_new": "Rome"},
             {"prompt": "{} is in", "subject": "Louvre", "target_new": "Rome"}]
    monkeypatch.setattr(erase, "unheld", lambda model_, tok_, requests, config: [0])
    one = llm_edit.edit(model, tok, facts, method="rome", layer=1, progress=False)
    assert len(one.batches) == 2 and "later_rounds" not in one.manifest
    one.revert()
    result = llm_edit.edit(model, tok, facts, method="rome", layer=1, insert_rounds=2, progress=False)
    assert len(result.batches) == 3
    (again,) = result.manifest["later_rounds"]
    assert again["round"] == 2 and again["requests"] == [0]
    result.revert()
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())


def test_a_session_records_a_later_round_as_edits_again_not_as_new_facts(tiny, tmp_path, monkeypatch):
    """With insert_rounds 2 a session saves the later round's patch, counted as edited again (no new
    facts) and hashed over the requests it edits; reopening re-applies every round bit for bit."""
    import json

    from llm_edit.editing.edit import facts_sha256
    from llm_edit.editing.methods import erase
    from llm_edit.editing.requests import parse_request
    from llm_edit.editing.session import EditSession

    model, tok = tiny("llama")
    facts = [{"prompt": "{} is in", "subject": "Eiffel Tower", "target_new": "Rome"},
             {"prompt": "{} is in", "subject": "Louvre", "target_new": "Rome"}]
    monkeypatch.setattr(erase, "unheld", lambda model_, tok_, requests, config: [1])
    session = EditSession.create(tmp_path / "s", model, "rome", sets=["layer=1", "insert_rounds=2"])
    session.edit(tok, facts, progress=False)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    batches = json.loads((tmp_path / "s" / "session.json").read_text())["batches"]
    assert [b["facts"] for b in batches] == [1, 1, 0] and batches[2]["edited_again"] == 1
    assert batches[2]["facts_sha256"] == facts_sha256([parse_request(facts[1], "x")])
    assert batches[0]["facts_sha256"] == facts_sha256([parse_request(facts[0], "x")])
    assert session.facts == 2
    fresh, _ = tiny("llama")
    EditSession.open(tmp_path / "s", fresh, tok)
    assert all(torch.equal(after[k], v) for k, v in fresh.state_dict().items())
