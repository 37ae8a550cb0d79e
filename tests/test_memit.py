"""MEMIT on tiny random models: batches, the layer range, sequential batches, exact revert."""
import pytest
import torch

import llm_edit
from llm_edit.core.arch import arch_of
from llm_edit.editing.rank_one import batch_update, leak_fractions
from llm_edit.evaluating.metrics import target_logprob

REQUESTS = [{"prompt": "{} is in", "subject": "Eiffel Tower", "target_new": "Rome", "target_true": "Paris"},
            {"prompt": "{} was written by", "subject": "Hamlet", "target_new": "Goethe", "target_true": "Shakespeare"},
            {"prompt": "The {} plays", "subject": "Lakers", "target_new": "soccer", "target_true": "basketball"}]


def p_new(model, tok):
    prompts = [r["prompt"].replace("{}", r["subject"]) for r in REQUESTS]
    return target_logprob(model, tok, prompts, [r["target_new"] for r in REQUESTS]).exp()


def test_batch_update_closed_form():
    """With λC → 0 the update writes every new value exactly; with a large λ it barely moves."""
    torch.manual_seed(0)
    keys, residuals = torch.randn(3, 8), torch.randn(3, 5)
    left, right = batch_update(residuals, keys, torch.eye(8), 1e-9)
    assert torch.allclose((left @ right) @ keys.T, residuals.T, atol=1e-4)
    left, right = batch_update(residuals, keys, torch.eye(8), 1e6)
    assert (left @ right).abs().max() < 1e-4


def test_batch_update_preserved_keys():
    """A preserved key with a large weight is (almost) not moved, while the edited keys are still
    written; without preserved keys the update is bit for bit the plain one."""
    torch.manual_seed(0)
    keys, residuals, kept = torch.randn(3, 8), torch.randn(3, 5), torch.randn(2, 8)
    kept = kept + keys[:2]  # close to the edited keys, as another landmark of the same city is
    plain = batch_update(residuals, keys, torch.eye(8), 1e-3)
    assert all(torch.equal(a, b) for a, b in zip(plain, batch_update(residuals, keys, torch.eye(8), 1e-3, None, 5.0)))
    loose = plain[0] @ plain[1]
    left, right = batch_update(residuals, keys, torch.eye(8), 1e-3, kept, 1e6)
    tight = left @ right
    assert (tight @ kept.T).norm() < 1e-2 * (loose @ kept.T).norm()
    assert torch.allclose(tight @ keys.T, residuals.T, atol=1e-2)  # 8 dimensions: room for both


def test_batch_update_also_preserved_groups_add_their_weighted_keys():
    """Each (keys, weight) group of ``also_preserved`` adds weight·KᵀK, as ``preserved`` does:
    both routes give the same factors (closed form), and an empty group changes nothing."""
    torch.manual_seed(0)
    keys, residuals, kept, more = torch.randn(3, 8), torch.randn(3, 5), torch.randn(2, 8), torch.randn(4, 8)
    both = torch.cat([kept * 3.0 ** 0.5, more * 0.5 ** 0.5])  # weights 3 and 0.5, as one group of weight 1
    left, right = batch_update(residuals, keys, torch.eye(8), 0.1, kept, 3.0, ((more, 0.5),))
    once = batch_update(residuals, keys, torch.eye(8), 0.1, both, 1.0)
    assert torch.allclose(left @ right, once[0] @ once[1], atol=1e-5)
    plain = batch_update(residuals, keys, torch.eye(8), 0.1, kept, 3.0)
    assert all(torch.equal(a, b) for a, b in zip(plain, batch_update(residuals, keys, torch.eye(8), 0.1, kept, 3.0,
                                                                      ((more[:0], 0.5),))))


def test_leak_fractions_are_what_the_batch_update_writes_at_other_keys():
    """Hand-computed: one unit key, C = I, λ = 1: the update is r kᵀ/2, so a key o receives
    (k·o)/2 against k's own 1/2, a share k·o. In a batch, the update written at another key is
    the shares' mix of the residuals, each scaled as its own key's."""
    key = torch.tensor([[1.0, 0.0, 0.0]])
    other = torch.tensor([[0.5, 2.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(leak_fractions(key, other, torch.eye(3), 1.0), torch.tensor([[0.5, 0.0]]))
    torch.manual_seed(0)
    keys, residuals, others = torch.randn(3, 8), torch.randn(3, 5), torch.randn(4, 8)
    cov, lam = torch.eye(8) + 0.1 * torch.ones(8, 8), 2.0
    left, right = batch_update(residuals, keys, cov, lam)
    own = (right * keys).sum(1)  # what each key receives of its own residual
    shares = leak_fractions(keys, others, cov, lam)
    written = (left @ right) @ others.T  # (5, 4)
    assert torch.allclose(written, residuals.T @ (shares * own[:, None]), atol=1e-4)
    assert torch.allclose(leak_fractions(keys, keys, cov, lam).diagonal(), torch.ones(3), atol=1e-5)


def test_leak_kl_chooses_another_value_and_records_where_it_leaks(tiny):
    """``leak_kl`` (memit, memit-erase): the preserved facts' prompts enter the value loss with the
    share of δ the update leaks to them; the manifest lists them per request with their shares.
    A share of 0 changes nothing (its KL's gradient is zero; up to rounding: the row changes the
    batch's shape)."""
    from llm_edit.editing.keys import context_templates
    from llm_edit.editing.requests import parse_preserved, parse_request
    from llm_edit.editing.values import optimise_values

    model, tok = tiny("llama")
    kept = [{"prompt": "{} is in", "subject": "Louvre", "target_true": "Paris"},
            {"prompt": "{} was written by", "subject": "Macbeth", "target_true": "Shakespeare"}]
    result = llm_edit.edit(model, tok, REQUESTS, "memit", layers=[1, 2], preserve=kept, leak_kl=1.0, leak_facts=1,
                           progress=False)
    leaks = [info["leak_shares"] for info in result.manifest["per_request"]]
    result.revert()
    assert all(len(per) == 1 and per[0][0] in ("Louvre", "Macbeth") for per in leaks)

    requests = [parse_request(REQUESTS[0], "t")]
    other = parse_preserved(kept[0], "t")
    contexts = context_templates(model, tok, [3], 1)
    name = arch_of(model).layer(2)

    def deltas(leaks, leak_kl):
        out = optimise_values(model, tok, name, requests, contexts, steps=3, lr=0.5, kl_factor=0.0625,
                              weight_decay=0.5, clamp_norm_factor=4.0, kl_prompts=["{} is a"], nll_stop=0.0,
                              leaks=leaks, leak_kl=leak_kl)
        return out[0].delta

    plain = deltas(None, 0.0)
    assert torch.allclose(plain, deltas([[(other, 0.0)]], 1.0), atol=1e-4)
    assert not torch.allclose(plain, deltas([[(other, 0.8)]], 100.0), atol=1e-2)


def test_leak_share_gives_every_leak_row_that_share_and_the_same_object_first(tiny):
    """``leak_share``: each leak row receives that share of δ, whatever the update leaks, and a
    request's leak facts are the preserved ones that share its old object before any other."""
    model, tok = tiny("llama")
    kept = [{"prompt": "{} was written by", "subject": "Macbeth", "target_true": "Shakespeare"},
            {"prompt": "{} is in", "subject": "Louvre", "target_true": "Paris"},
            {"prompt": "{} plays", "subject": "Celtics", "target_true": "basketball"}]
    result = llm_edit.edit(model, tok, REQUESTS, "memit", layers=[1, 2], preserve=kept, leak_kl=1.0, leak_facts=1,
                           leak_share=0.5, progress=False)
    leaks = [info["leak_shares"] for info in result.manifest["per_request"]]
    result.revert()
    assert leaks == [[["Louvre", 0.5]], [["Macbeth", 0.5]], [["Celtics", 0.5]]]
    # past the same-object facts, the ones the update leaks to most; a fact without an object shares none
    batch = [{"prompt": "{} is in", "subject": "Tower Bridge", "target_new": "Rome"}, REQUESTS[0]]

    def leak_names(**kw):
        result = llm_edit.edit(model, tok, batch, "memit", layers=[1, 2], preserve=kept, leak_kl=1.0, leak_facts=3,
                               progress=False, **kw)
        result.revert()
        return [[name for name, _ in info["leak_shares"]] for info in result.manifest["per_request"]]

    most = leak_names()  # the computed shares' order (taken on the model before the batch, as with leak_share)
    no_object, paris = leak_names(leak_share=1.0)
    assert no_object == most[0]
    assert paris[0] == "Louvre" and paris[1:] == [name for name in most[1] if name != "Louvre"]
    with pytest.raises(ValueError, match="leak_share"):
        llm_edit.edit(model, tok, REQUESTS, "memit", layers=[1, 2], leak_share=1.5, progress=False)
    with pytest.raises(ValueError, match="needs leak_kl"):
        llm_edit.edit(model, tok, REQUESTS, "memit", layers=[1, 2], leak_share=0.5, progress=False)


def test_memit_preserve_keeps_the_given_facts_and_records_them(tiny):
    """``edit(preserve=...)``: the update leaves a preserved fact's key output where it was
    (at the first edited layer, whose keys no update below changes; bare_key_weight 1: the key
    is the bare prompt's), and the manifest lists the preserved facts; methods without
    preserved keys refuse them."""
    from llm_edit.editing.keys import mean_subject_keys

    kept_fact = {"prompt": "{} is in", "subject": "Louvre", "target_true": "Paris"}  # no target_new: not edited
    model, tok = tiny("llama")
    name = arch_of(model).mlp_out.format(1)
    module = model.get_submodule(name)

    def moved(**kw):
        from llm_edit.editing.requests import parse_preserved

        key = mean_subject_keys(model, tok, name, [parse_preserved(kept_fact, "t")], ["{}"])
        result = llm_edit.edit(model, tok, REQUESTS, "memit", layers=[1, 2], bare_key_weight=1.0, progress=False,
                               **kw)
        w_after = module.weight.detach().clone()
        result.revert()
        delta = w_after - module.weight.detach()
        return float((delta @ key.T).norm()), result

    free, _ = moved()
    held, result = moved(preserve=[kept_fact], preserve_weight=1e4)
    assert held < 0.1 * free
    assert result.manifest["preserved"][0]["subject"] == "Louvre"
    with pytest.raises(ValueError, match="cannot preserve"):
        llm_edit.edit(model, tok, REQUESTS[:1], "alphaedit", preserve=[kept_fact], progress=False)


def test_memit_batch_raises_every_target_and_reverts(tiny):
    model, tok = tiny("gpt2")
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    before = p_new(model, tok)
    result = llm_edit.edit(model, tok, REQUESTS, "memit", layers=[1, 2], progress=False)
    ratio = p_new(model, tok) / before  # random tiny models edit weakly; every target must rise
    assert (ratio > 1).all() and ratio.max() > 2
    assert result.manifest["layer"] == [1, 2] and len(result.per_request) == 3
    changed = sorted(k for k in snap if not torch.equal(snap[k], model.state_dict()[k]))
    assert changed == sorted(arch_of(model).mlp_out.format(l) + ".weight" for l in (1, 2))
    result.revert()
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())


def test_sequential_batches_stack_and_revert_together(tiny):
    model, tok = tiny("llama")
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    before = p_new(model, tok)
    result = llm_edit.edit(model, tok, REQUESTS, "memit", layers=[1, 2], batch_size=2,
                           progress=False)  # batches of 2 then 1
    ratio = p_new(model, tok) / before
    assert (ratio > 1).all() and ratio.max() > 2
    name = arch_of(model).mlp_out.format(1) + ".weight"
    assert result.delta.factors[name][0].shape[1] == 3  # rank 2 + rank 1, stacked
    result.revert()
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())


def test_memit_erase_lowers_the_true_objects(tiny):
    from test_erase import top_word

    model, tok = tiny("gpt2")
    prompts = [r["prompt"].replace("{}", r["subject"]) for r in REQUESTS]
    trues = [top_word(model, tok, p) for p in prompts]  # what the random model "knows"
    before = target_logprob(model, tok, prompts, trues)
    requests = [dict(r, target_true=t) for r, t in zip(REQUESTS, trues)]
    result = llm_edit.edit(model, tok, requests, "memit-erase", layers=[1, 2], progress=False)
    after = target_logprob(model, tok, prompts, trues)
    assert (after < before).all()
    result.revert()


def test_memit_config_checks_the_shared_value_options(tiny):
    model, tok = tiny("llama")
    with pytest.raises(llm_edit.core.config.ConfigError, match="bare_key_weight"):
        llm_edit.edit(model, tok, REQUESTS, "memit", bare_key_weight=1.5, progress=False)
    with pytest.raises(llm_edit.core.config.ConfigError, match="increasing"):
        llm_edit.edit(model, tok, REQUESTS, "memit", layers=[2, 1], progress=False)


def test_known_key_weight_holds_known_entities_keys_but_not_the_batch_subjects(tiny, monkeypatch):
    """``known_key_weight``: the training half's known facts' keys join the old keys, so the update
    leaves a known entity's key output (almost) where it was, while a request whose subject is
    itself a known fact is still written; the manifest names the entities held."""
    import llm_edit.editing.methods.memit as memit
    from llm_edit.editing.keys import subject_keys

    pool = [{"prompt": "Louvre is in", "subject": "Louvre", "attribute": "Paris"},
            {"prompt": "Eiffel Tower is in", "subject": "Eiffel Tower", "attribute": "Paris"}]  # REQUESTS[0]'s
    monkeypatch.setattr(memit, "known_facts", lambda half: pool if half == "train" else [])
    model, tok = tiny("llama")
    name = arch_of(model).mlp_out.format(1)
    module = model.get_submodule(name)
    louvre, eiffel = subject_keys(model, tok, name, ["{} is in", "{} is in"], ["Louvre", "Eiffel Tower"])

    def moved(**kw):
        result = llm_edit.edit(model, tok, REQUESTS, "memit", layers=[1, 2], bare_key_weight=1.0, progress=False,
                               **kw)
        delta = module.weight.detach().clone()
        result.revert()
        delta -= module.weight.detach()
        return float((delta @ louvre).norm()), float((delta @ eiffel).norm()), result

    free_louvre, free_eiffel, _ = moved()
    held_louvre, held_eiffel, result = moved(known_key_weight=1e4)
    assert held_louvre < 0.1 * free_louvre
    assert held_eiffel > 0.5 * free_eiffel  # the edited subject is left out of the held keys
    assert result.manifest["known_key_subjects"] == ["Louvre", "Eiffel Tower"]
    plain = llm_edit.edit(model, tok, REQUESTS[:1], "memit", layers=[1, 2], progress=False)
    plain.revert()
    assert "known_key_subjects" not in plain.manifest
    with pytest.raises(ValueError, match="known_key_weight"):
        llm_edit.edit(model, tok, REQUESTS, "memit", layers=[1, 2], known_key_weight=-1.0, progress=False)
