"""Causal tracing on tiny random models: the fast path (prefix KV cache + replayed blocks)
equals the plain one, exact identities of the method, average tracing, plots, the CLI."""
import json
import math

import pytest
import torch

from llm_edit.locating import average, plots, trace as locate
from llm_edit.core.arch import arch_of, num_layers
from llm_edit.core.files import FactFileError
from llm_edit.core.hooks import replay_blocks
from llm_edit.core.text import SubjectNotFound

from conftest import LAYOUTS, STORAGE

PROMPT, SUBJECT = "The Eiffel Tower is located in the city of", "Eiffel Tower"
FACTS = [{"prompt": "The {} is located in the city of", "subject": "Eiffel Tower", "target": "Paris"},
         {"prompt": "{} is a city in", "subject": "Osaka", "target": "Japan"},
         {"prompt": "The {} was written by", "subject": "Divine Comedy", "target": "Dante"}]


@pytest.mark.parametrize("model_type", LAYOUTS)
def test_fast_path_equals_full_recomputation(tiny, model_type):
    model, tok = tiny(model_type)
    kw = dict(kinds=["hidden", "mlp", "attn"], samples=3, window=2, noise=0.5, batch_size=16)
    fast = locate.trace(model, tok, PROMPT, SUBJECT, "Paris", reuse_prefix=True, **kw)
    full = locate.trace(model, tok, PROMPT, SUBJECT, "Paris", reuse_prefix=False, **kw)
    for kind in kw["kinds"]:
        a, b = fast.indirect_effect(kind), full.indirect_effect(kind)
        assert not torch.isnan(a).any()
        assert torch.allclose(a, b, atol=1e-5), kind


@pytest.mark.parametrize("model_type", STORAGE)
def test_identities_of_causal_tracing(tiny, model_type):
    model, tok = tiny(model_type)
    result = locate.trace(model, tok, PROMPT, SUBJECT, "Paris", kinds=["hidden"], samples=4, noise=1.0)
    n_tok, n_layers = len(result.tokens), num_layers(model)
    assert result.tokens[result.subject_first].strip() and result.subject_first <= result.subject_last
    # the last token's final hidden state determines the output: restoring it gives the clean p
    assert math.isclose(result.scores["hidden"][n_tok - 1][n_layers - 1], result.p_clean, rel_tol=1e-4)
    # before the subject, clean and corrupted states are the same: no effect at all
    ie = result.indirect_effect("hidden")
    assert torch.equal(ie[: result.subject_first], torch.zeros(result.subject_first, n_layers, dtype=ie.dtype))
    # restoring the whole subject at the embedding... i.e. no noise: nothing to restore
    quiet = locate.trace(model, tok, PROMPT, SUBJECT, "Paris", kinds=["mlp"], samples=2, noise=0.0)
    assert math.isclose(quiet.p_corrupted, quiet.p_clean, rel_tol=1e-5)
    assert quiet.indirect_effect("mlp").abs().max() < 1e-5


def test_positions_and_target_default(tiny):
    model, tok = tiny("llama")
    result = locate.trace(model, tok, "The {} is located in the city of", SUBJECT, kinds=["mlp"], samples=2,
                          noise=0.5, positions=["last_subject"])
    assert result.correct  # no target given: the model's own top token is traced
    rows = [t for t, row in enumerate(result.scores["mlp"]) if row is not None and row[0] is not None]
    assert rows == [result.subject_last]
    with pytest.raises(SubjectNotFound):
        locate.trace(model, tok, "The Louvre is in", SUBJECT, noise=0.5)
    with pytest.raises(ValueError, match="kind"):
        locate.trace(model, tok, PROMPT, SUBJECT, kinds=["mlpp"], noise=0.5)


def test_noise_scale_is_three_std_of_subject_embeddings_and_cached(tiny):
    model, tok = tiny("llama")
    subjects = ["Eiffel Tower", "Osaka"]
    ids = [i for s in subjects for i in tok(s, add_special_tokens=False)["input_ids"]]
    expected = 3 * model.get_submodule(arch_of(model).embed).weight[ids].std().item()
    assert math.isclose(locate.noise_scale(model, tok, subjects), expected, rel_tol=1e-5)
    assert math.isclose(locate.noise_scale(model, tok, subjects), expected, rel_tol=1e-5)  # from the cache


def test_replay_blocks_restores_the_modules_even_on_error(tiny):
    model, tok = tiny("llama")
    block = model.get_submodule(arch_of(model).layer(0))
    with pytest.raises(RuntimeError):
        with replay_blocks([block], [torch.zeros(1)]):
            assert torch.equal(block(torch.ones(2)), torch.zeros(1))
            raise RuntimeError
    assert "forward" not in block.__dict__


def test_average_tracing_is_the_mean_of_per_fact_effects(tiny):
    model, tok = tiny("gpt2")
    avg = average.trace_facts(model, tok, FACTS, kinds=["mlp", "hidden"], limit=None, samples=2, window=2,
                             only_correct=False, progress=False, use_cache=False)
    assert avg.n_facts == 3 and len(avg.effects["mlp"]["last_subject"]) == num_layers(model)
    mean0 = sum(f["mlp_last_subject"][0] for f in avg.per_fact) / 3
    assert math.isclose(avg.effects["mlp"]["last_subject"][0], mean0, rel_tol=1e-9)
    values = avg.effects["mlp"]["last_subject"]
    assert avg.peak("mlp") == values.index(max(values))
    assert avg.layers(3)[-1] == avg.peak("mlp") and len(avg.layers(3)) <= 3
    with pytest.raises(ValueError, match="answers none"):  # a random model knows nothing
        average.trace_facts(model, tok, FACTS, samples=2, progress=False, use_cache=False)


def test_plots_are_png(tmp_path, tiny):
    model, tok = tiny("llama")
    result = locate.trace(model, tok, PROMPT, SUBJECT, "Paris", kinds=["attn"], samples=2, noise=0.5)
    result.plot(tmp_path / "t.png", "attn")
    avg = average.trace_facts(model, tok, FACTS[:2], kinds=["mlp"], samples=2, only_correct=False, progress=False,
                             use_cache=False)
    plots.plot_average(avg, tmp_path / "a.png")
    for name in ("t.png", "a.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_known_facts_shipped_and_validated(tmp_path):
    facts = locate.known_facts()
    assert len(facts) == 1209 and facts[0]["subject"] in facts[0]["prompt"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(FACTS[0]) + "\n" + json.dumps({"prompt": "x {}", "subject": "y"}) + "\n")
    with pytest.raises(FactFileError) as e:
        locate.known_facts(bad)
    assert e.value.line == 2 and e.value.field == "target"
