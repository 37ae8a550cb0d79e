"""Forget/retain files: three shapes, TOFU's files as they are, clear errors, and what gets loss."""
import json
from pathlib import Path

import pytest

from llm_edit.core.files import FactFileError
from llm_edit.unlearning.items import Formatting, collate, encode, parse_item, read_items

TOFU = Path(__file__).resolve().parents[2] / "shared" / "data" / "tofu"


def test_three_shapes(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [
        {"prompt": "The {} is in", "subject": "Eiffel Tower", "target": "Paris", "paraphrase_prompts": ["X"]},
        {"prompt": "Eiffel Tower is in", "subject": "Eiffel Tower", "target_true": "Paris", "target_new": "Rome"},
        {"question": "Who?", "answer": "Me.", "paraphrased_question": "Who is it?"},
        {"text": "Some passage."}]) + "\n")
    fact, request, qa, text = read_items(path)
    assert (fact.kind, fact.prompt, fact.answer, fact.paraphrases) == ("fact", "The Eiffel Tower is in", "Paris", ("X",))
    assert (request.kind, request.answer) == ("fact", "Paris")  # an edit request forgets its true object
    assert (qa.kind, qa.prompt, qa.paraphrases) == ("qa", "Who?", ("Who is it?",))
    assert (text.kind, text.answer) == ("text", "Some passage.")


def test_json_arrays_one_per_line_load(tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps([{"question": "a?", "answer": "b"}] * 2) + "\n" +
                    json.dumps([{"question": "c?", "answer": "d"}]) + "\n")
    assert [i.prompt for i in read_items(path)] == ["a?", "a?", "c?"]


@pytest.mark.skipif(not TOFU.is_dir(), reason="needs ../shared/data/tofu")
def test_tofu_files_load_as_they_are():
    assert len(read_items(TOFU / "forget10.json")) == 400
    perturbed = read_items(TOFU / "forget10_perturbed.json")
    assert perturbed[0].paraphrases and "perturbed_answer" in perturbed[0].extra


@pytest.mark.parametrize("line, field, message", [
    ('{"prompt": "The {} is", "subject": "Louvre"}', "target", "is missing"),
    ('{"prompt": "Paris is nice", "subject": "Louvre", "target": "x"}', "subject", "does not occur"),
    ('{"question": "q", "answer": 3}', "answer", "must be a string"),
    ('{"text": "t", "colour": "red"}', "colour", "not a known field"),
    ('{"prompt": "a", ', None, "malformed JSON"),
    ('{"foo": 1}', None, "neither a fact"),
])
def test_errors_name_file_line_and_field(tmp_path, line, field, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(FactFileError, match=message) as info:
        read_items(path)
    assert (info.value.source, info.value.line, info.value.field) == (str(path), 2, field)


def test_loss_covers_the_answer_only(tiny):
    _, tok = tiny("llama")
    fmt = Formatting()
    qa = parse_item({"question": "Who?", "answer": "Me and you."})
    ids, start = encode(tok, qa, fmt, 128)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Who?"}], tokenize=True, add_generation_prompt=True)
    prompt = list(prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt)
    assert ids[:start] == prompt and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[start:-1]) == "Me and you."
    batch = collate([(ids, start), encode(tok, parse_item({"prompt": "{} is in", "subject": "Rome", "target": "Italy"}),
                                            fmt, 128)], tok.pad_token_id)
    labels = batch.labels[0]
    assert (labels[: start - 1] == -100).all() and labels[start - 1: len(ids) - 1].tolist() == ids[start:]
    assert (labels[len(ids) - 1:] == -100).all()  # padding never has loss
    fact_labels = [x for x in batch.labels[1].tolist() if x != -100]
    assert tok.decode(fact_labels) == " Italy"  # a fact: the object, no EOS


def test_without_a_chat_template_questions_use_a_plain_format(tiny):
    _, tok = tiny("llama")
    qa = parse_item({"question": "Who?", "answer": "Me."})
    ids, start = encode(tok, qa, Formatting(use_chat_template=False), 128)
    assert tok.decode(ids[:start]).endswith("Question: Who?\nAnswer: ")


def test_neighbour_facts_share_the_object_or_the_relation_and_never_a_forgotten_subject():
    from llm_edit.unlearning.items import neighbour_facts, parse_item

    items = [parse_item({"prompt": "{} is located in the country of", "subject": "Colosseum", "target": "Italy"}),
             parse_item({"prompt": "{} belongs to the continent of", "subject": "Mount Kenya", "target": "Africa",
                         "relation_id": "P30"})]
    found = neighbour_facts(items, per_item=2)
    assert [n.extra["neighbour_of"] for n in found] == ["Colosseum", "Colosseum", "Mount Kenya", "Mount Kenya"]
    # both the object and the relation come first: other places in Italy, other places in Africa
    assert all(n.answer == "Italy" and "country of" in n.prompt for n in found[:2])
    assert all(n.answer == "Africa" and n.extra["relation_id"] == "P30" for n in found[2:])
    assert all(n.extra["shares"] == "object and relation" for n in found)
    assert len({n.extra["subject"] for n in found}) == 4
    assert not any(n.extra["subject"] in ("Colosseum", "Mount Kenya") for n in found)
    assert neighbour_facts([parse_item({"question": "q?", "answer": "a"})]) == []


def test_neighbourhood_given_in_the_file_wins():
    from llm_edit.unlearning.items import given_neighbours, parse_item

    item = parse_item({"prompt": "{} is in", "subject": "Eiffel Tower", "target": "Paris",
                       "neighborhood": [{"prompt": "The Louvre is in", "target": "Paris"}]})
    (n,) = given_neighbours([item])
    assert (n.prompt, n.answer, n.extra["neighbour_of"]) == ("The Louvre is in", "Paris", "Eiffel Tower")
    with pytest.raises(Exception, match="neighborhood"):
        parse_item({"prompt": "{} is in", "subject": "X", "target": "Y", "neighborhood": [{"prompt": "Z"}]})


def test_forget_holds_counts_untrained_neighbours_apart():
    """evals/forget_holds.py: a neighbour whose subject the run protected is left out of the
    untrained-only figure (kept 1 of 2 overall, 1 of 1 untrained)."""
    from conftest import eval_script

    from llm_edit.unlearning.items import ForgetItem

    holds = eval_script("forget_holds")
    items = [ForgetItem("fact", "The Louvre is in", "Paris", (), {"subject": "Louvre"}),
             ForgetItem("fact", "Big Ben is in", "London", (), {"subject": "Big Ben"})]
    before = [{"answered": True}, {"answered": True}]
    after = [{"answered": False}, {"answered": True}]
    manifest = {"protective_retain": [{"extra": {"subject": "Louvre"}}], "derived_forms": []}
    assert holds.kept(before, after) == (1, 2)
    assert holds.kept_untrained(before, after, items, holds.trained_subjects(manifest)) == (1, 1)
    held = {"known_key_subjects": ["LOUVRE"], "derived_forms": []}  # memit's known_key_weight holds their keys
    assert holds.kept_untrained(before, after, items, holds.trained_subjects(held)) == (1, 1)


def test_forget_holds_refuses_subject_facts_that_are_not_about_a_forgotten_subject_or_repeat_its_object():
    """evals/forget_holds.py --subject-facts: other facts about the forgotten subjects only, never
    the forgotten fact itself; the file and line are named."""
    from conftest import eval_script

    from llm_edit.unlearning.items import ForgetItem

    holds = eval_script("forget_holds")
    forgotten = [ForgetItem("fact", "Sukarno follows the religion of", "Islam", (), {"subject": "Sukarno"})]
    fine = ForgetItem("fact", "Sukarno was the first president of", "Indonesia", (), {"subject": "Sukarno"})
    holds.check_subject_facts("s.jsonl", [fine], forgotten)
    other = ForgetItem("fact", "Hatta was the vice-president of", "Indonesia", (), {"subject": "Hatta"})
    with pytest.raises(ValueError, match="s.jsonl:2: subject 'Hatta' is not a forgotten subject"):
        holds.check_subject_facts("s.jsonl", [fine, other], forgotten)
    same = ForgetItem("fact", "Sukarno's religion was", "islam", (), {"subject": "Sukarno"})
    with pytest.raises(ValueError, match="s.jsonl:1: target 'islam' is the forgotten object"):
        holds.check_subject_facts("s.jsonl", [same], forgotten)


def test_holds_table_shows_the_untrained_figure_beside_the_overall_one():
    """evals/holds_table.py: a run that protected some judged facts shows the share over the
    others in brackets; a run with leaks and no such figure is flagged."""
    from conftest import eval_script

    table = eval_script("holds_table")
    clean = {"neighbours_kept": 0.5, "neighbours_known_before": 4, "leaks": []}
    assert table.kept(clean, "neighbours") == "0.500"
    rescored = dict(clean, leaks=["louvre"], neighbours_kept_untrained=2 / 3, neighbours_untrained_known_before=3)
    assert table.kept(rescored, "neighbours") == "0.500 (0.667 on 3 untrained)"
    assert table.kept(dict(clean, leaks=["louvre"]), "neighbours") == "0.500 leaks!"


@pytest.mark.parametrize("model_dir", ["", "gemma"])
def test_the_forgetting_sets_that_choose_share_no_subject_with_those_that_report(model_dir):
    """evals/data (and evals/data/gemma): values are chosen on the development and tuning sets and
    reported on the held-out one, so no subject the held-out set judges may appear in a set that
    chooses."""
    data = Path(__file__).resolve().parents[1] / "evals" / "data" / model_dir

    def subjects(*names):
        return {x.extra["subject"].lower() for name in names for x in read_items(data / f"{name}.jsonl")}

    reporting = subjects("forget_heldout", "neighbours_heldout", "unrelated_heldout")
    dev = ("forget_dev", "neighbours_dev", "unrelated_dev")
    if model_dir == "gemma":
        # Gemma's held-out neighbours were drawn without excluding the development set's judges: 37 of
        # the 171 (29 development neighbours, 8 development unrelated facts) judge both. The README gives
        # the held-out figure on the other 134 too; this pins the overlap at those 37.
        assert not subjects("forget_heldout", "unrelated_heldout") & subjects(*dev)
        assert len(subjects("neighbours_heldout") & subjects(*dev)) == 37
    else:
        assert not subjects(*dev) & reporting
    assert not subjects("forget_tune", "neighbours_tune", "unrelated_tune") & reporting
    assert not subjects("forget_tune") & subjects(*dev)


def test_the_rewrite_sets_that_tune_share_no_subject_with_the_one_that_reports():
    """evals/data: ROME's recipe values are chosen on CounterFact-train records and reported on
    CounterFact-val ones (evals/tune_split.py); the larger tuning set is the first 40 and the
    next 100 known records, joined."""
    data = Path(__file__).resolve().parents[1] / "evals" / "data"

    def lines(name):
        return (data / f"{name}.jsonl").read_text().splitlines()

    def subjects(name):
        return {json.loads(line)["subject"].lower() for line in lines(name)}

    assert lines("counterfact_train_known140") == lines("counterfact_train_known40") + lines(
        "counterfact_train_known_next100")
    assert not subjects("counterfact_train_known40") & subjects("counterfact_train_known_next100")
    assert not subjects("counterfact_train_known140") & subjects("counterfact_val_known100")
