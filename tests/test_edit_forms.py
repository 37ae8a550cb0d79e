"""Editing judged by generation: the forms, what counts as holding, the scores, portability."""
import json

import pytest

from llm_edit.core.files import FactFileError
from llm_edit.editing.requests import EditRequest, Neighbor, parse_request
from llm_edit.evaluating import edit_forms as E
from llm_edit.evaluating.edit_forms import FormAnswer, generation_scores


def answer(request, form, text, expected="Rome", unwanted="Paris"):
    return FormAnswer(request, form, "", text, expected, unwanted)


def test_an_edit_holds_when_the_new_object_is_said_and_the_old_one_is_not():
    assert answer(0, "chat", " It is in Rome, Italy.").holds
    assert not answer(0, "chat", " Rome? No, it is in Paris.").holds  # both named: not a changed belief
    assert not answer(0, "chat", " Paris.").holds
    assert not answer(0, "chat", " Saint Jerome").holds  # at the start of a word (core.text.mentions)
    assert FormAnswer(0, "portability", "", " Italy", "Italy", None).holds
    assert answer(0, "chat", " New York City", expected="New York City", unwanted="New York").holds
    assert not answer(0, "chat", " New York City, not New York", expected="New York City", unwanted="New York").holds


def test_the_subject_repeated_in_the_answer_names_neither_object():
    def maker(text):
        return FormAnswer(0, "chat", "", text, "Honda", "Toyota", "Toyota RAV4")

    assert maker("The Toyota RAV4 is made by Honda.").holds
    assert not maker("The Toyota RAV4 is made by Honda, not Toyota.").holds
    assert not maker("The Toyota RAV4 is a Toyota.").holds and maker("The Toyota RAV4 is a Toyota.").says_old
    assert not maker("The Toyota RAV4 is a compact SUV.").says_old  # only the subject: not the old maker
    assert not maker("The toyota rav4's engine is large.").says_old  # any case; the name as a whole word
    # an object that starts with the subject's name is still found
    language = FormAnswer(0, "chat", "", "The official language of Vietnam is Vietnamese.", "Thai", "Vietnamese",
                          "Vietnam")
    assert language.says_old and not language.holds
    # without a subject, as before: the name counts
    assert not FormAnswer(0, "chat", "", "The Toyota RAV4 is made by Honda.", "Honda", "Toyota").holds


def test_scores_count_only_forms_the_model_answered_before():
    before = [answer(0, "chat", " Paris"), answer(1, "chat", " Paris"), answer(2, "chat", " I do not know"),
              answer(0, "question", " Paris"), FormAnswer(0, "portability", "", " France", "Italy", None),
              FormAnswer(1, "portability", "", " Italy", "Italy", None)]
    after = [answer(0, "chat", " Rome"), answer(1, "chat", " Paris"), answer(2, "chat", " Rome"),
             answer(0, "question", " Rome, not Paris"), FormAnswer(0, "portability", "", " Italy", "Italy", None),
             FormAnswer(1, "portability", "", " Spain", "Italy", None)]
    scores = generation_scores(after, before)
    # chat: requests 0 and 1 answered Paris before; 0 holds, 1 does not; request 2 never counted
    assert scores["gen_chat"] == 0.5 and scores["gen_chat_n"] == 2
    assert scores["gen_question"] == 0.0 and scores["gen_question_n"] == 1
    assert scores["gen_prompt"] is None and scores["gen_prompt_n"] == 0
    assert scores["portability"] == 0.5 and scores["portability_n"] == 2
    # without the model before, every answer counts
    alone = generation_scores(after)
    assert alone["gen_chat"] == pytest.approx(2 / 3) and alone["gen_chat_n"] == 3


def test_forms_follow_the_relation_and_the_chat_template(tiny):
    _, tok = tiny("llama")
    with_relation = EditRequest("{} is located in the country of", "Eiffel Tower", "Italy", "France", relation_id="P17")
    forms = E.form_prompts(tok, with_relation)
    assert set(forms) == {"prompt", "chat", "question", "in_context"} if tok.chat_template else \
        {"prompt", "question", "in_context"}
    assert tok.decode(forms["question"]).endswith("Question: Which country is Eiffel Tower located in?\nAnswer:")
    assert tok.decode(forms["in_context"]).endswith(E.CONTEXT + "Eiffel Tower is located in the country of")
    bare = E.form_prompts(tok, EditRequest("{} is in", "Eiffel Tower", "Rome", "Paris"))
    assert "question" not in bare  # no relation: no question template


def test_an_answer_on_the_next_line_is_judged_by_what_it_says(tiny, monkeypatch):
    """"Answer:" followed by "\nRome" says Rome: every form is judged on its answer's first line
    with text (a chat answer up to its first blank line after text), not on an empty first line.
    The greedy decoding is scripted; the forms, stops and judging are the real ones."""
    from conftest import script_greedy_decoding

    model, tok = tiny("llama")
    script = tok("\nRome\n\nParis", add_special_tokens=False)["input_ids"]
    script_greedy_decoding(monkeypatch, lambda prompt: script)
    request = EditRequest("{} is located in", "Eiffel Tower", "Rome", "Paris", relation_id="P17")
    answers = E.generation_answers(model, tok, [request])
    assert {a.form for a in answers} >= {"prompt", "question", "in_context"}
    assert all(a.holds for a in answers), [(a.form, a.answer) for a in answers]


def test_the_judges_wordings_are_in_no_training_form():
    """The editors' derived training forms (core.forms without MQuAKE's questions, with or
    without llm-edit's own) must contain none of the generation forms' wordings, MQuAKE's
    question included, or the forms would measure what was trained on."""
    from llm_edit.core.forms import FINISH, MQUAKE, TRAINING_QUESTIONS, fact_forms, question_template

    judge = [E.CONTEXT.strip(), E.COMPLETE.split("{}")[0].strip(), E.QUESTION.split("{}")[0].strip()]
    relations = set(json.loads(TRAINING_QUESTIONS.read_text())) | set(json.loads(
        (MQUAKE / "question_templates.json").read_text()))
    for relation in sorted(relations) + [None]:
        question = question_template(relation)
        for questions in ("none", "own"):
            for form in fact_forms("{} is located in", relation, chat=True, questions=questions):
                text = (form.template + " " + (form.reply or "")).lower()
                assert not any(w.lower() in text for w in judge), (form, relation)
                assert not question or question.lower() not in text, (form, relation)
    assert not any(w in FINISH for w in judge)
    # the own questions are really used: a question form wherever the file has the relation
    own = {f.name: f.template for f in fact_forms("{} is located in", "P17", chat=True, questions="own")}
    assert own["question"] == "In what country is {}?" and own["chat_reply"] == own["question"]
    assert not any(f.name == "question" for f in fact_forms("{} is located in", "P17", chat=True, questions="none"))
    with pytest.raises(ValueError, match="questions"):
        fact_forms("{} is located in", "P17", chat=True, questions="yes")
    # erasures keep their question forms (the forgetting audit judges them with other wordings)
    assert any(f.name == "question" for f in fact_forms("{} is located in", "P17", chat=True))


def test_insertions_with_forms_train_on_them_without_questions(tiny):
    from llm_edit.core.config import load_config
    from llm_edit.editing.methods import get_method
    from llm_edit.editing.methods.erase import value_objective

    _, tok = tiny("llama")
    request = EditRequest("{} is located in", "Eiffel Tower", "Rome", "Paris", relation_id="P17")
    for method in ("rome", "memit", "alphaedit"):
        config, _ = load_config(get_method(method).config, method, model_recipe="tiny", sets=["expand=forms"])
        forms = value_objective(config, [request], tok)["forms"][0]
        assert forms and not any(f.name in ("question", "chat_question") for f in forms)
        config, _ = load_config(get_method(method).config, method, model_recipe="tiny",
                                sets=["expand=forms", "own_questions=true"])
        forms = value_objective(config, [request], tok)["forms"][0]
        assert {f.template for f in forms if f.name in ("question", "chat_question")} == {"In what country is {}?"}
        config, _ = load_config(get_method(method).config, method, model_recipe="tiny")
        assert "forms" not in value_objective(config, [request], tok)
    with pytest.raises(Exception, match="expand"):
        load_config(get_method("rome").config, "rome", model_recipe="tiny", sets=["expand=everything"])
    with pytest.raises(Exception, match="needs expand: forms"):
        load_config(get_method("rome").config, "rome", model_recipe="tiny", sets=["expand=none", "own_questions=true"])
    with pytest.raises(Exception, match="own_questions is for insertions"):
        load_config(get_method("memit-erase").config, "memit-erase", model_recipe="tiny",
                    sets=["expand=forms", "own_questions=true"])


def test_an_erasures_value_rows_suppress_the_object_as_each_form_goes_on(tiny):
    """Prompts and whole-sentence replies go on " Paris"; a chat turn the assistant answers with
    the object alone starts "Paris", so that is what an erasure makes unlikely there. An
    insertion trains the spaced object in every row (measured: README)."""
    from llm_edit.core.forms import fact_forms
    from llm_edit.editing.value_rows import _value_rows

    _, tok = tiny("llama")
    request = EditRequest("{} is located in", "Eiffel Tower", "Rome", "Paris", relation_id="P17")
    forms = fact_forms(request.prompt, request.relation_id, chat=True, questions="mquake")
    contexts = ["{}", "Then. {}"]
    erase = _value_rows(tok, request, "Paris", contexts, ["{} is a"], forms, objective="suppress")
    said = {f.name: tok.decode(row.target) for f, row in zip(forms, erase[2:])}
    assert said == {"question": " Paris", "chat_question": "Paris", "subject_first": " Paris", "chat_reply": " Paris"}
    assert [tok.decode(row.target) for row in erase[:2]] == [" Paris", " Paris"] and erase[-1].target == []
    insert = _value_rows(tok, request, "Rome", contexts, ["{} is a"], forms)
    assert {tok.decode(row.target) for row in insert[:-1]} == {" Rome"}


def test_portability_probes_are_read_written_and_checked(tmp_path):
    record = {"prompt": "{} is located in the city of", "subject": "Eiffel Tower", "target_new": "Rome",
              "target_true": "Paris", "portability": [{"prompt": "The Eiffel Tower is in the country of",
                                                       "target": "Italy"}]}
    request = parse_request(record)
    assert request.portability == (Neighbor("The Eiffel Tower is in the country of", "Italy"),)
    assert request.to_dict()["portability"] == record["portability"]
    assert "portability" not in parse_request(dict(record, portability=[])).to_dict()  # old files stay byte-equal
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(dict(record, portability=[{"prompt": "x"}])) + "\n")
    from llm_edit.editing.requests import read_requests

    with pytest.raises(FactFileError, match=r"bad.jsonl:1: field .portability\[0\]."):
        read_requests(path)


def test_generation_answers_on_a_tiny_model(tiny):
    model, tok = tiny("llama")
    request = EditRequest("{} is located in the country of", "Eiffel Tower", "Italy", "France", relation_id="P17",
                          portability=(Neighbor("The Eiffel Tower is in the city of", "Rome"),))
    answers = E.generation_answers(model, tok, [request], max_new_tokens=4)
    forms = [a.form for a in answers]
    assert forms.count("portability") == 1 and "question" in forms and "in_context" in forms
    assert all(a.request == 0 and isinstance(a.answer, str) for a in answers)


def test_tune_split_with_a_tolerance_chooses_the_first_value_that_scores_nearly_as_well():
    """evals/tune_split.py --tolerance: cheaper values are listed first; the first within the
    tolerance of the best score is chosen, the best when none other is."""
    from conftest import eval_script

    choose = eval_script("tune_split").choose
    runs = [{"sets": ["v_steps=8"], "score": 0.80}, {"sets": ["v_steps=12"], "score": 0.86},
            {"sets": ["v_steps=20"], "score": 0.87}]
    assert choose(runs, 0.0)["sets"] == ["v_steps=20"]
    assert choose(runs, 0.02)["sets"] == ["v_steps=12"]
    assert choose(runs, 0.1)["sets"] == ["v_steps=8"]
    tie = [{"sets": ["a"], "score": 0.5}, {"sets": ["b"], "score": 0.9}, {"sets": ["c"], "score": 0.9}]
    assert choose(tie, 0.0)["sets"] == ["b"]


def test_tune_split_chooses_on_one_set_and_reports_on_the_other(tmp_path):
    import json as _json

    from conftest import run_eval, write_city_facts

    tune, report = tmp_path / "tune.jsonl", tmp_path / "report.jsonl"
    write_city_facts(tune, ("Eiffel Tower", "Louvre"))
    write_city_facts(report, ("Colosseum",))
    out = tmp_path / "tune.json"
    done = run_eval("tune_split.py", "--tune", str(tune), "--report", str(report), "--grid", "kl_factor=0.0625,1.0",
                    "--out", str(out), home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    result = _json.loads(out.read_text())
    assert len(result["tune"]["runs"]) == 2 and result["chosen"] in [r["sets"] for r in result["tune"]["runs"]]
    assert all(r["reverts_bit_exact"] for r in result["tune"]["runs"] + result["report"]["runs"])
    assert "gen_in_context" in result["report"]["runs"][0]["after"] and "report set" in done.stdout
    # the tuning runs keep the judgments they failed, to read; the report set's are not kept
    assert all(isinstance(r["misses"], list) for r in result["tune"]["runs"])
    assert not any("misses" in r for r in result["report"]["runs"])
    assert all(m["form"] in ("prompt", "chat", "question", "in_context") and m["answer"] is not None
               for r in result["tune"]["runs"] for m in r["misses"])
    only = tmp_path / "only.json"
    done = run_eval("tune_split.py", "--tune", str(tune), "--report", str(report), "--grid", "kl_factor=1.0",
                    "--tune-only", "--out", str(only), home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert _json.loads(only.read_text())["report"] is None and "report set" not in done.stdout
    clash = run_eval("tune_split.py", "--tune", str(tune), "--report", str(tune), "--grid", "kl_factor=1.0",
                     "--out", str(out), home=tmp_path / "home")
    assert clash.returncode != 0 and "not disjoint" in clash.stderr

    # --tuned-in: the earlier tuning half and its choice, only the report set runs again
    again = tmp_path / "again.json"
    done = run_eval("tune_split.py", "--tune", str(tune), "--report", str(report), "--grid", "kl_factor=0.0625,1.0",
                    "--tuned-in", str(out), "--out", str(again), home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    second = _json.loads(again.read_text())
    assert second["tune"]["runs"] == result["tune"]["runs"] and second["chosen"] == result["chosen"]
    assert second["tune"]["from"] == str(out) and second["report"]["runs"][0]["after"]
    write_city_facts(tune, ("Eiffel Tower",))  # another tuning file than the earlier run's
    stale = run_eval("tune_split.py", "--tune", str(tune), "--report", str(report), "--grid", "kl_factor=1.0",
                     "--tuned-in", str(out), "--out", str(again), home=tmp_path / "home")
    assert stale.returncode != 0 and "sha256 differs" in stale.stderr
    write_city_facts(tune, ("Eiffel Tower", "Louvre"))
    other_grid = run_eval("tune_split.py", "--tune", str(tune), "--report", str(report), "--grid", "kl_factor=1.0",
                          "--tuned-in", str(out), "--out", str(again), home=tmp_path / "home")
    assert other_grid.returncode != 0 and "its runs were" in other_grid.stderr


def test_rome_with_insert_lead_ins_says_the_new_object_after_them(tiny, monkeypatch):
    """Where the model's answer (given here: a random model's text has no words to find) names the
    old object after a lead-in, insert_lead_in_tokens also trains the new object after it, records
    the lead-in, and leaves the new object likelier there than an edit without lead-ins does."""
    import llm_edit
    from llm_edit.core import scoring
    from llm_edit.evaluating.metrics import target_logprob

    model, tok = tiny("llama")
    lead = " the city that is in"  # short and one clause, as an insertion's lead-ins must be
    after_lead = "Eiffel Tower is in" + lead
    monkeypatch.setattr(scoring, "generate", lambda model, tok, prompts, max_new_tokens: [f"{lead} Paris."] * len(prompts))
    fact = {"prompt": "{} is in", "subject": "Eiffel Tower", "target_new": "Rome", "target_true": "Paris"}

    def p_new():
        return target_logprob(model, tok, [after_lead], ["Rome"]).exp().item()

    before = p_new()
    plain = llm_edit.edit(model, tok, [fact], "rome", progress=False)
    p_plain = p_new()
    plain.revert()
    led = llm_edit.edit(model, tok, [fact], "rome", insert_lead_in_tokens=8, progress=False)
    assert led.per_request[0]["lead_in_forms"] == [["prompt+lead_in", "{} is in" + lead, None]]
    assert p_new() > max(p_plain, before)
    led.revert()
