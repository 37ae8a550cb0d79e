import json

import pytest

from llm_edit.editing.requests import EditRequest, Neighbor, parse_request, read_requests, write_requests
from llm_edit.core.files import FactFileError


def _write(tmp_path, lines, name="facts.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_native_shape_with_subject_inside_prompt():
    r = parse_request({"prompt": "The Eiffel Tower is in", "subject": "Eiffel Tower", "target_new": "Rome",
                       "neighborhood": [{"prompt": "The Louvre is in", "target": "Paris"}]})
    assert r.prompt == "The {} is in" and r.text == "The Eiffel Tower is in"
    assert r.neighborhood == (Neighbor("The Louvre is in", "Paris"),)


def test_easyedit_flat_counterfact_shape():
    r = parse_request({"case_id": 3087, "prompt": "David Robinson professionally plays the sport",
                       "target_new": "baseball", "subject": "David Robinson", "ground_truth": "basketball",
                       "rephrase_prompt": "David Robinson's greatest weakness is",
                       "locality_prompt": "Shaquille O'Neal plays", "locality_ground_truth": "basketball"})
    assert r.prompt == "{} professionally plays the sport"
    assert (r.target_new, r.target_true) == ("baseball", "basketball")
    assert r.paraphrase_prompts == ("David Robinson's greatest weakness is",)
    assert r.neighborhood == (Neighbor("Shaquille O'Neal plays", "basketball"),)


def test_rome_nested_counterfact_shape():
    r = parse_request({"case_id": 0, "requested_rewrite": {
        "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "relation_id": "P103",
        "target_new": {"str": "English", "id": "Q1860"}, "target_true": {"str": "French", "id": "Q150"}},
        "paraphrase_prompts": ["Danielle Darrieux's mother tongue is"],
        "neighborhood_prompts": ["The mother tongue of Léon Blum is"], "generation_prompts": []})
    assert (r.target_new, r.target_true) == ("English", "French")
    assert r.neighborhood == (Neighbor("The mother tongue of Léon Blum is", "French"),)


def test_shared_counterfact_file_loads(shared_counterfact):
    requests = read_requests(shared_counterfact, limit=50)
    assert len(requests) == 50 and all(r.target_true for r in requests)


@pytest.fixture
def shared_counterfact():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "counterfact" / "counterfact-edit-1k.json"
    if not path.is_file():
        pytest.skip("../shared/data is not beside this checkout")
    return path


@pytest.mark.parametrize("line, field, message", [
    ('{"prompt": "The {} is in", "target_new": "Rome"}', "subject", "is missing"),
    ('{"prompt": "The Louvre is in", "subject": "Eiffel Tower", "target_new": "Rome"}', "subject",
     "does not occur in the prompt"),
    ('{"prompt": "The {} is in", "subject": "Eiffel Tower", "target_new": "  "}', "target_new", "is empty"),
    ('{"prompt": "The {} is in", "subject": "Eiffel Tower", "target_new": "Rome", "colour": 1}', "colour",
     "not a known field"),
    ('{"prompt": "The {} is in", "subject": "Eiffel Tower", "target_new": 3}', "target_new", "must be a string"),
    ('{"prompt": "{} is {}", "subject": "X", "target_new": "Rome"}', "prompt", "more than once"),
    ('{"prompt": "{} is in", "subject": "X", "target_new": "Rome", "neighborhood": [{"prompt": "a"}]}',
     "neighborhood[0]", "exactly 'prompt' and 'target'"),
])
def test_bad_records_name_file_line_and_field(tmp_path, line, field, message):
    good = '{"prompt": "The {} is in", "subject": "Eiffel Tower", "target_new": "Rome"}'
    path = _write(tmp_path, [good, "", line])
    with pytest.raises(FactFileError) as e:
        read_requests(path)
    assert (e.value.line, e.value.field) == (3, field)
    assert str(e.value).startswith(f"{path}:3: field '{field}'") and message in str(e.value)


def test_malformed_json_names_the_line(tmp_path):
    path = _write(tmp_path, ['{"prompt": "The {} is in", "subject": "X", "target_new": "Rome"}', '{"prompt": '])
    with pytest.raises(FactFileError, match=r"facts.jsonl:2: malformed JSON"):
        read_requests(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FactFileError, match="no such file"):
        read_requests(tmp_path / "nope.jsonl")
    with pytest.raises(FactFileError, match="holds no requests"):
        read_requests(_write(tmp_path, [""]))


def test_json_array_file_and_round_trip(tmp_path):
    records = [{"prompt": "The {} is in", "subject": "Eiffel Tower", "target_new": "Rome", "target_true": "Paris",
                "paraphrase_prompts": ["Eiffel Tower lies in"],
                "neighborhood": [{"prompt": "The Louvre is in", "target": "Paris"}]}]
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(records))
    requests = read_requests(path)
    assert isinstance(requests[0], EditRequest)
    out = tmp_path / "copy.jsonl"
    write_requests(requests, out)
    assert read_requests(out) == requests
    assert json.loads(out.read_text().splitlines()[0]) == records[0]
