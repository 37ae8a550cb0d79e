import pytest
import torch
from transformers.pytorch_utils import Conv1D

from llm_edit.core.arch import ARCHITECTURES, UnsupportedArchitecture, arch_of, num_layers
from llm_edit.core.models import TINY_CONFIGS, build_tiny

from conftest import TINY_TYPES


def test_every_architecture_has_a_tiny_model():
    assert set(TINY_TYPES) == set(TINY_CONFIGS)
    assert set(TINY_CONFIGS) <= set(ARCHITECTURES)


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_table_resolves_on_tiny_model(model_type):
    model, _ = build_tiny(model_type)
    spec = arch_of(model)
    assert num_layers(model) == 4
    for path in (spec.embed, spec.final_norm, spec.lm_head):
        model.get_submodule(path)
    assert model.get_submodule(spec.embed) is model.get_input_embeddings()
    assert model.get_submodule(spec.lm_head) is model.get_output_embeddings()
    d_model = model.get_input_embeddings().weight.shape[1]
    for i in range(4):
        mlp_out = model.get_submodule(spec.mlp_out.format(i))
        assert isinstance(mlp_out, Conv1D) == spec.mlp_out_transposed
        w = mlp_out.weight.T if spec.mlp_out_transposed else mlp_out.weight
        assert w.shape == (d_model, 128)  # (d_model, d_mlp) once seen as (out, in)
        model.get_submodule(spec.mlp.format(i))
        model.get_submodule(spec.attn_out.format(i))
        assert spec.mlp_out.format(i).startswith(spec.layer(i) + ".")
        if spec.mlp_post_norm:
            assert spec.mlp_post_norm.format(i).startswith(spec.layer(i) + ".")
            assert model.get_submodule(spec.mlp_post_norm.format(i)).weight.shape == (d_model,)
    # every block that normalises its MLP's output before the residual says so
    block = model.get_submodule(spec.layer(0))
    assert bool(spec.mlp_post_norm) == hasattr(block, "post_feedforward_layernorm")


@pytest.mark.parametrize("model_type", ["gemma3_text", "gemma3"])
def test_a_post_norm_residual_is_written_through_the_norm(model_type):
    """MEMIT's residual r, converted by ``through_post_norm``, turns the normalised MLP output
    N(m + dx) to the direction of N(m) + r (one context: no averaging in the way)."""
    from llm_edit.editing.keys import subject_keys, through_post_norm
    from llm_edit.editing.requests import EditRequest

    model, tok = build_tiny(model_type)
    spec = arch_of(model)
    request = EditRequest("{} is in", "Eiffel Tower", "Rome")
    m = subject_keys(model, tok, spec.mlp_out.format(1), [request.prompt], [request.subject], output=True)
    norm = model.get_submodule(spec.mlp_post_norm.format(1))
    with torch.no_grad():
        before = norm(m)
    r = torch.randn_like(before, generator=torch.Generator().manual_seed(0)) * before.norm() / 4
    dx = through_post_norm(model, tok, 1, [request], ["{}"], r)
    with torch.no_grad():
        after = norm(m + dx)
    assert torch.nn.functional.cosine_similarity(after, before + r).item() > 0.999
    with torch.no_grad():
        as_is = norm(m + r)  # what MEMIT wrote before: r itself as the MLP output's change
    assert torch.nn.functional.cosine_similarity(as_is, before + r).item() < 0.99


def test_unknown_architecture_says_how_to_add_it():
    class Fake(torch.nn.Module):
        class config:
            model_type = "made_up"

    with pytest.raises(UnsupportedArchitecture, match="llm_edit/arch.py"):
        arch_of(Fake())


def test_tiny_models_are_deterministic():
    a, _ = build_tiny("llama", seed=3)
    b, _ = build_tiny("llama", seed=3)
    c, _ = build_tiny("llama", seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
