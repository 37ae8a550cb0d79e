import pytest
import torch

import llm_edit
from llm_edit.core.arch import arch_of
from llm_edit.core.config import ConfigError
from llm_edit.editing.requests import parse_request
from llm_edit.editing.keys import context_templates, mean_subject_key, mean_subject_keys
from llm_edit.evaluating.metrics import target_logprob
from llm_edit.editing.contract import Memory
from llm_edit.editing.methods import METHODS, rome

from conftest import STORAGE, TINY_TYPES


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", [m for m in METHODS if not METHODS[m].erases])
@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_edit_raises_target_and_revert_is_exact(method, model_type, tiny, eiffel):
    model, tok = tiny(model_type)
    snap = _snapshot(model)
    p_before = target_logprob(model, tok, ["Eiffel Tower is in"], ["Rome"]).exp().item()
    result = llm_edit.edit(model, tok, [eiffel], method, progress=False)
    p_after = target_logprob(model, tok, ["Eiffel Tower is in"], ["Rome"]).exp().item()
    # Where a norm follows the MLP (Gemma 2/3) MEMIT and AlphaEdit write through it, which can only
    # turn the MLP's output, not grow it: on the tiny random Gemma 3 models that raises the target
    # 1.36-1.41x (measured), on real Gemma 3 270M it took MEMIT's efficacy from 0.61 to 0.96.
    through_norm = arch_of(model).mlp_post_norm and method in ("memit", "alphaedit")
    assert p_after > (1.2 if through_norm else 1.5) * p_before
    assert result.per_request[0]["loss_after_optimisation"] < result.per_request[0]["loss_before"]
    changed = [k for k in snap if not torch.equal(snap[k], model.state_dict()[k])]
    layers = result.manifest["layer"] if isinstance(result.manifest["layer"], list) else [result.manifest["layer"]]
    assert changed == [arch_of(model).mlp_out.format(l) + ".weight" for l in layers]
    result.revert()
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("model_type", STORAGE)
def test_rank_one_update_writes_the_new_value_at_the_key(model_type, tiny, eiffel):
    """Closed form: after the edit, the edited module maps k* to v_init + δ (r-ROME)."""
    model, tok = tiny(model_type)
    config = llm_edit.core.config.load_config(rome.ROMEConfig, "rome", recipe="tiny")[0]
    state = rome.prepare(model, tok, config)
    (name,) = state.modules
    request = parse_request(eiffel)
    key = mean_subject_key(model, tok, name, request, state.contexts)
    module = model.get_submodule(name)
    with torch.no_grad():
        old_value = module(key)
    factors, (info,) = rome.compute(model, tok, [request], config, state, Memory())
    delta = llm_edit.WeightDelta(factors).apply(model, check_base=False)
    with torch.no_grad():
        new_value = module(key)
    assert torch.allclose((new_value - old_value).norm(), torch.tensor(info["delta_norm"]), rtol=1e-3)
    delta.revert(model)


def test_several_requests_apply_in_order_and_revert_together(tiny, eiffel):
    model, tok = tiny("llama")
    snap = _snapshot(model)
    second = dict(eiffel, subject="Louvre", target_new="Tokyo", neighborhood=[])
    result = llm_edit.edit(model, tok, [eiffel, second], progress=False)
    assert len(result.per_request) == 2
    name = next(iter(result.delta.factors))
    assert result.delta.factors[name][0].shape[1] == 2  # two stacked rank-one updates
    result.revert()
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())


def test_failure_part_way_leaves_the_model_as_it_was(tiny, eiffel, monkeypatch):
    model, tok = tiny("llama")
    snap = _snapshot(model)
    real = rome.compute
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setitem(METHODS, "rome", METHODS["rome"].__class__(
        **{**METHODS["rome"].__dict__, "compute": flaky}))
    with pytest.raises(KeyboardInterrupt):
        llm_edit.edit(model, tok, [eiffel, dict(eiffel, subject="Louvre")], progress=False)
    assert len(calls) == 2
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())


def test_nan_update_is_refused_and_model_unchanged(tiny, eiffel, monkeypatch):
    model, tok = tiny("llama")
    snap = _snapshot(model)
    real = rome.compute

    def poisoned(*args, **kwargs):
        factors, info = real(*args, **kwargs)
        (name, (left, right)), = factors.items()
        return {name: (left * float("nan"), right)}, info

    monkeypatch.setitem(METHODS, "rome", METHODS["rome"].__class__(
        **{**METHODS["rome"].__dict__, "compute": poisoned}))
    with pytest.raises(FloatingPointError):
        llm_edit.edit(model, tok, [eiffel], progress=False)
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())


def test_misspelt_keyword_fails_loudly(tiny, eiffel):
    model, tok = tiny("llama")
    with pytest.raises(ConfigError, match="did you mean 'v_lr'"):
        llm_edit.edit(model, tok, [eiffel], v_lrr=0.1)


def test_layer_out_of_range(tiny, eiffel):
    model, tok = tiny("llama")
    with pytest.raises(ConfigError, match="layer 9 does not exist"):
        llm_edit.edit(model, tok, [eiffel], layer=9, progress=False)


def test_context_templates_are_seeded(tiny):
    model, tok = tiny("llama")
    a = context_templates(model, tok, (3,), 2, seed=5)
    model2, _ = tiny("llama")
    b = context_templates(model2, tok, (3,), 2, seed=5)
    assert a == b and a[0] == "{}" and all(t.endswith(". {}") for t in a[1:])


def test_edit_result_saves_a_patch_that_reapplies(tmp_path, tiny, eiffel):
    model, tok = tiny("qwen2")
    result = llm_edit.edit(model, tok, [eiffel], progress=False)
    edited = _snapshot(model)
    result.save_patch(tmp_path / "p.safetensors")
    result.revert()
    patch = llm_edit.apply_patch(model, tmp_path / "p.safetensors")
    for k, v in model.state_dict().items():
        assert torch.allclose(v, edited[k], atol=1e-6)
    manifest = patch.manifest
    assert manifest["method"] == "rome" and manifest["facts"][0]["subject"] == "Eiffel Tower"
    assert manifest["hyperparameters"]["layer"] == 1 and len(manifest["facts_sha256"]) == 64


def test_bare_key_weight_mixes_the_unprefixed_key(tiny, eiffel):
    from llm_edit.editing.keys import subject_keys

    model, tok = tiny("llama")
    name = arch_of(model).mlp_out.format(1)
    request = parse_request(eiffel)
    contexts = ["{}", "Hello there. {}", "I think. {}"]
    keys = subject_keys(model, tok, name, [c.replace("{}", request.prompt) for c in contexts],
                        [request.subject] * 3)
    assert torch.allclose(mean_subject_key(model, tok, name, request, contexts), keys.mean(0))
    assert torch.allclose(mean_subject_key(model, tok, name, request, contexts, 1.0), keys[0])
    half = mean_subject_key(model, tok, name, request, contexts, 0.5)
    assert torch.allclose(half, 0.5 * keys[0] + 0.25 * keys[1] + 0.25 * keys[2], atol=1e-6)


def test_form_key_weight_mixes_the_forms_keys_into_k_star(tiny, eiffel):
    """k* = (1 − w)·(the prefix average) + w·(the mean key at the subject in the derived forms,
    chat turns encoded through the template as the value rows are), checked by hand."""
    from llm_edit.core.forms import Form
    from llm_edit.core.hooks import Trace
    from llm_edit.core.text import encode_with_subject
    from llm_edit.editing.keys import subject_keys

    model, tok = tiny("llama")
    name = arch_of(model).mlp_out.format(1)
    request = parse_request(eiffel)
    contexts = ["{}", "Hello there. {}"]
    forms = [Form("subject_first", "{} is located in the city of", False),
             Form("chat_statement", "Finish this sentence: {} is in", True),
             Form("chat_reply", "Finish this sentence: {} is in", True, "{} is in")]
    base = mean_subject_key(model, tok, name, request, contexts, 0.8)
    assert torch.equal(mean_subject_key(model, tok, name, request, contexts, 0.8, forms, 0.0), base)
    by_hand = []
    for f in forms:
        ids, last = encode_with_subject(tok, f.template, request.subject, chat=f.chat, reply=f.reply)
        with torch.no_grad(), Trace(model, [name], retain_input=True, stop=True) as tr:
            model(input_ids=torch.tensor([ids]))
        by_hand.append(tr[name].input[0, last].float())
    expected = 0.7 * base + 0.3 * torch.stack(by_hand).mean(0)
    assert torch.allclose(mean_subject_key(model, tok, name, request, contexts, 0.8, forms, 0.3), expected, atol=1e-5)
    plain = subject_keys(model, tok, name, [forms[0].template], [request.subject])
    assert torch.allclose(plain[0], by_hand[0], atol=1e-5)
    assert not torch.allclose(by_hand[1], by_hand[2])  # the subject in the user's turn, then in the reply
    # two requests in one call: each k* mixes its own forms only
    other = parse_request({"prompt": "{} was written by", "subject": "Hamlet", "target_new": "Goethe"})
    other_forms = [Form("subject_first", "{} is a play by", False)]
    both = mean_subject_keys(model, tok, name, [request, other], contexts, 0.8, [forms, other_forms], 0.3)
    assert torch.allclose(both[0], expected, atol=1e-5)
    assert torch.allclose(both[1], mean_subject_key(model, tok, name, other, contexts, 0.8, other_forms, 0.3),
                          atol=1e-5)


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_form_key_weight_edit_raises_the_target_and_reverts(model_type, tiny, eiffel):
    """ROME with the forms' keys in k*: the edit contract holds and the key (so the update) differs."""
    model, tok = tiny(model_type)
    snap = _snapshot(model)
    p_before = target_logprob(model, tok, ["Eiffel Tower is in"], ["Rome"]).exp().item()
    mixed = llm_edit.edit(model, tok, [eiffel], "rome", progress=False, expand="forms", form_key_weight=0.5)
    p_after = target_logprob(model, tok, ["Eiffel Tower is in"], ["Rome"]).exp().item()
    assert p_after > 1.5 * p_before and mixed.manifest["hyperparameters"]["form_key_weight"] == 0.5
    mixed.revert()
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())
    plain = llm_edit.edit(model, tok, [eiffel], "rome", progress=False, expand="forms")
    (w,) = mixed.delta.factors
    assert not torch.allclose(mixed.delta.factors[w][1], plain.delta.factors[w][1])
    plain.revert()


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_form_key_weight_reaches_the_batch_editors_keys(method, tiny, eiffel):
    """MEMIT and AlphaEdit pass the forms to their layer loop: the keys, so every layer's update,
    differ from the same edit without them, and the revert is bit-exact."""
    model, tok = tiny("llama")
    snap = _snapshot(model)
    kw = dict(progress=False, expand="forms", layers=[1, 2])
    plain = llm_edit.edit(model, tok, [eiffel], method, **kw)
    plain.revert()
    mixed = llm_edit.edit(model, tok, [eiffel], method, form_key_weight=0.5, **kw)
    mixed.revert()
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())
    for w in plain.delta.factors:
        assert not torch.allclose(plain.delta.dense(w), mixed.delta.dense(w))


def test_form_key_weight_is_checked(tiny, eiffel):
    """Out of [0, 1], or without the forms it mixes in: a ConfigError naming the key."""
    model, tok = tiny("llama")
    with pytest.raises(llm_edit.core.config.ConfigError, match="form_key_weight"):
        llm_edit.edit(model, tok, [eiffel], "rome", progress=False, form_key_weight=0.5)  # expand: none
    with pytest.raises(llm_edit.core.config.ConfigError, match="form_key_weight"):
        llm_edit.edit(model, tok, [eiffel], "rome", progress=False, expand="forms", form_key_weight=1.5)


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_key_shares_edit_still_raises_the_target_and_reverts(model_type, tiny, eiffel):
    """``key_shares``: the same edit contract (target raised, bit-exact revert), another value
    than without it (the prompts' shares are not all 1)."""
    model, tok = tiny(model_type)
    snap = _snapshot(model)
    p_before = target_logprob(model, tok, ["Eiffel Tower is in"], ["Rome"]).exp().item()
    shared = llm_edit.edit(model, tok, [eiffel], "rome", progress=False, key_shares=True)
    p_after = target_logprob(model, tok, ["Eiffel Tower is in"], ["Rome"]).exp().item()
    assert p_after > 1.5 * p_before and shared.manifest["hyperparameters"]["key_shares"] is True
    shared.revert()
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())
    whole = llm_edit.edit(model, tok, [eiffel], "rome", progress=False)
    assert shared.per_request[0]["delta_norm"] != whole.per_request[0]["delta_norm"]
    whole.revert()
