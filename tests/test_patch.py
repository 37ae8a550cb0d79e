import pytest
import torch

from llm_edit.arch import mlp_out_weight_name
from llm_edit.patch import PatchError, WeightDelta, apply_patch, load_patch, tensor_sha256


def _delta(model, layer=1, rank=1, seed=0, scale=0.1):
    name = mlp_out_weight_name(model, layer)
    out, inp = model.get_parameter(name).shape
    g = torch.Generator().manual_seed(seed)
    factors = {name: (torch.randn(out, rank, generator=g) * scale, torch.randn(rank, inp, generator=g))}
    return WeightDelta(factors, {"method": "test"}, {name: tensor_sha256(model.get_parameter(name))})


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, snap):
    return all(torch.equal(snap[k], v) for k, v in model.state_dict().items())


def test_apply_changes_weights_and_revert_is_bitwise_exact(tiny):
    model, _ = tiny("llama")
    snap = _snapshot(model)
    d = _delta(model).apply(model)
    assert not _same(model, snap)
    d.revert(model)
    assert _same(model, snap)


def test_stacked_patches_revert_exactly_in_reverse_order(tiny):
    model, _ = tiny("gpt2")
    snap = _snapshot(model)
    a = _delta(model, seed=1).apply(model)
    after_a = _snapshot(model)
    b = _delta(model, seed=2, rank=3).apply(model, check_base=False)
    b.revert(model)
    assert _same(model, after_a)
    a.revert(model)
    assert _same(model, snap)


def test_out_of_order_revert_subtracts_with_a_warning(tiny):
    model, _ = tiny("llama")
    snap = _snapshot(model)
    a = _delta(model, seed=1).apply(model)
    b = _delta(model, seed=2).apply(model, check_base=False)
    with pytest.warns(UserWarning, match="subtraction"):
        a.revert(model)
    with pytest.warns(UserWarning, match="subtraction"):
        b.revert(model)
    for k, v in model.state_dict().items():
        assert torch.allclose(v, snap[k], atol=1e-6)


def test_stack_sums_the_deltas_and_reverts_to_the_first_base(tiny):
    model, _ = tiny("llama")
    snap = _snapshot(model)
    a = _delta(model, seed=1).apply(model)
    b = _delta(model, seed=2, layer=2).apply(model)
    c = _delta(model, seed=3).apply(model, check_base=False)
    both = WeightDelta.stack([a, b, c])
    name = next(iter(a.factors))
    assert torch.allclose(both.dense(name), a.dense(name) + c.dense(name))
    both.revert(model)
    assert _same(model, snap)


def test_save_load_round_trip(tmp_path, tiny):
    model, _ = tiny("llama")
    snap = _snapshot(model)
    d = _delta(model, rank=2)
    d.save(tmp_path / "p.safetensors")
    loaded = load_patch(tmp_path / "p.safetensors")
    assert loaded.manifest == {"method": "test"} and loaded.base_sha256 == d.base_sha256
    applied = apply_patch(model, tmp_path / "p.safetensors")
    expected = d.apply(tiny("llama")[0])
    del expected
    applied.revert(model)
    assert _same(model, snap)


def test_patch_for_other_weights_is_refused(tiny):
    model, _ = tiny("llama")
    d = _delta(model)
    other, _ = tiny("qwen2")
    with pytest.raises(PatchError):
        d.apply(other)
    model2 = tiny("llama")[0]
    with torch.no_grad():
        model2.get_parameter(next(iter(d.factors))).add_(1e-3)
    with pytest.raises(PatchError, match="sha256"):
        d.apply(model2)


def test_non_finite_patch_leaves_the_model_unchanged(tiny):
    model, _ = tiny("llama")
    snap = _snapshot(model)
    good = _delta(model, layer=0)
    bad = _delta(model, layer=3)
    name = next(iter(bad.factors))
    bad.factors[name][0][0, 0] = float("nan")
    both = WeightDelta({**good.factors, **bad.factors})
    with pytest.raises(FloatingPointError):
        both.apply(model)
    assert _same(model, snap) and not both.applied


@pytest.mark.parametrize("content, message", [
    (b"", "not a valid safetensors"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "not a valid safetensors"),
])
def test_corrupt_patch_files(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(PatchError, match=message):
        load_patch(path)


def test_safetensors_file_that_is_not_a_patch(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(PatchError, match="not an llm-edit patch"):
        load_patch(tmp_path / "x.safetensors")


def test_truncated_patch_file(tmp_path, tiny):
    model, _ = tiny("llama")
    _delta(model).save(tmp_path / "p.safetensors")
    raw = (tmp_path / "p.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[:-100])
    with pytest.raises(PatchError, match="cut.safetensors"):
        load_patch(tmp_path / "cut.safetensors")
