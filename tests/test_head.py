"""The LM head applied by the losses (core.head): the same log-probabilities, KL and gradients as
the model's own logits, chunked or not, through wrappers, and the head always restored."""
import copy

import pytest
import torch

from llm_edit.core import head
from llm_edit.core.text import token_logprobs
from llm_edit.unlearning import losses


def _batch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(3, vocab, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0  # right padding
    labels = ids.clone()
    labels[:, :3] = -100  # prompt
    labels[mask == 0] = -100
    labels[1] = -100  # a sequence without answer tokens counts as 0
    return ids, mask, labels


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "gemma3_text", "gpt2"])
@pytest.mark.parametrize("chunked", [False, True])  # one piece; 5 positions per checkpointed chunk
def test_logprobs_and_gradients_match_the_models_logits(tiny, monkeypatch, model_type, chunked):
    model, _ = tiny(model_type)
    ids, mask, labels = _batch(model)
    if chunked:
        monkeypatch.setattr(head, "CHUNK_BYTES", 4 * model.get_output_embeddings().weight.shape[0] * 5)

    def grads(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full = token_logprobs(model(input_ids=ids, attention_mask=mask).logits, labels)
    expected = grads(full[0].sum())
    out = head.final_states(model, input_ids=ids, attention_mask=mask)
    assert out.states.shape[-1] == model.get_input_embeddings().weight.shape[1]
    ours = head.token_logprobs(out, labels)
    assert torch.equal(ours[1], full[1])
    assert torch.allclose(ours[0], full[0], atol=1e-5)
    got = grads(ours[0].sum())
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-5), name


@pytest.mark.parametrize("chunked", [False, True])
def test_kl_matches_the_full_logits_formula(tiny, monkeypatch, chunked):
    model, _ = tiny("gemma3_text")
    ids, mask, labels = _batch(model, seed=1)
    if chunked:
        monkeypatch.setattr(head, "CHUNK_BYTES", 4 * model.get_output_embeddings().weight.shape[0] * 4)
    reference = copy.deepcopy(model)  # as full fine-tuning's frozen copy (LoRA never adapts the head)
    with torch.no_grad():
        ref_logits = reference(input_ids=ids, attention_mask=mask).logits
        ref = head.final_states(reference, input_ids=ids, attention_mask=mask)
    with torch.no_grad():  # move the model a little so the KL is not 0
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    expected = losses.kl_to_reference(model(input_ids=ids, attention_mask=mask).logits, ref_logits, labels)
    model.zero_grad(set_to_none=True)
    expected.backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    per_token, rows = head.per_position(losses.token_kl, head.final_states(model, input_ids=ids, attention_mask=mask),
                                        ref, labels)
    ours = losses.sequence_mean(per_token, rows, labels.shape[0])
    assert expected.item() > 1e-4
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)
    ours.backward()
    for n, p in model.named_parameters():
        if n in expected_grads:
            assert torch.allclose(p.grad, expected_grads[n], atol=1e-6), n


def test_gemma2_head_soft_caps_like_the_model(tiny):
    model, _ = tiny("gemma2")
    assert model.config.final_logit_softcapping
    ids, mask, _ = _batch(model)
    out = head.final_states(model, input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        model.config.final_logit_softcapping = 0.5  # a cap the random logits reach: tanh visibly bends
        assert torch.allclose(head.head_of(model)[0](out.states), model(input_ids=ids, attention_mask=mask).logits,
                              atol=1e-5)


def test_deferred_head_is_restored_and_works_through_peft(tiny):
    from peft import LoraConfig, get_peft_model

    model, _ = tiny("llama")
    ids, mask, _ = _batch(model)
    lm_head = model.get_output_embeddings()
    with pytest.raises(RuntimeError):
        with head.deferred_head(model) as recorded:
            model(input_ids=ids, attention_mask=mask)
            assert len(recorded) == 1
            raise RuntimeError("interrupted")
    assert "forward" not in lm_head.__dict__
    expected = model(input_ids=ids, attention_mask=mask).logits
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "down_proj"]))
    out = head.final_states(peft_model, input_ids=ids, attention_mask=mask)
    assert torch.allclose(out.head(out.states), expected, atol=1e-5)  # LoRA's B starts at 0
    assert "forward" not in lm_head.__dict__
