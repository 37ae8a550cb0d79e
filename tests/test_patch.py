import pytest
import torch

from llm_edit.core.arch import mlp_out_weight_name
from llm_edit.core.patch import PatchError, WeightDelta, apply_patch, load_patch, tensor_sha256


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
    both = WeightDelta({**good.factors, **bad.factors}, base_sha256={**good.base_sha256, **bad.base_sha256})
    with pytest.raises(PatchError, match="non-finite"):
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


def _rewrite_manifest(src, dst, edit):
    """A copy of patch file ``src`` whose manifest JSON went through ``edit``."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    manifest = edit(json.loads(meta["manifest"]))
    save_file(tensors, str(dst), metadata={**meta, "manifest": json.dumps(manifest)})
    return dst


@pytest.mark.parametrize("edit", [
    lambda m: {**m, "base_sha256": {}},  # emptied
    lambda m: {**m, "base_sha256": {"model.embed_tokens.weight": "0" * 64}},  # keyed to another tensor
    lambda m: {**m, "base_sha256": {k: "" for k in m["base_sha256"]}},  # blanked
], ids=["emptied", "other-tensor", "blank"])
def test_a_patch_without_a_usable_base_hash_is_refused_unless_asked(tmp_path, tiny, edit):
    model, _ = tiny("llama")
    snap = _snapshot(model)
    _delta(model).save(tmp_path / "p.safetensors")
    bad = load_patch(_rewrite_manifest(tmp_path / "p.safetensors", tmp_path / "bad.safetensors", edit))
    with pytest.raises(PatchError, match=r"bad\.safetensors.*no usable base-weight sha256.*--no-check-base"):
        bad.apply(model)
    assert _same(model, snap)
    bad.apply(model, check_base=False)  # asked for explicitly
    assert not _same(model, snap)


def test_wrong_base_hash_names_the_file_and_the_option(tmp_path, tiny):
    model, _ = tiny("llama")
    _delta(model).save(tmp_path / "p.safetensors")
    other, _ = tiny("llama")
    with torch.no_grad():
        other.get_parameter(next(iter(load_patch(tmp_path / "p.safetensors").factors))).add_(1.0)
    with pytest.raises(PatchError, match=r"p\.safetensors.*sha256 mismatch.*--no-check-base"):
        apply_patch(other, tmp_path / "p.safetensors")


@pytest.mark.parametrize("edit, message", [
    (lambda m: [m], "must be a JSON object"),
    (lambda m: {**m, "base_sha256": "abc"}, "'base_sha256' must map"),
    (lambda m: {**m, "base_sha256": {"x": 3}}, "'base_sha256' must map"),
], ids=["list", "string", "number"])
def test_malformed_manifests_are_patch_errors(tmp_path, tiny, edit, message):
    model, _ = tiny("llama")
    _delta(model).save(tmp_path / "p.safetensors")
    with pytest.raises(PatchError, match=message):
        load_patch(_rewrite_manifest(tmp_path / "p.safetensors", tmp_path / "bad.safetensors", edit))


def test_absurdly_scaled_factors_name_the_file_and_change_nothing(tmp_path, tiny):
    from safetensors import safe_open
    from safetensors.torch import save_file

    model, _ = tiny("llama")
    snap = _snapshot(model)
    _delta(model).save(tmp_path / "p.safetensors")
    with safe_open(str(tmp_path / "p.safetensors"), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) * 1e20 for k in f.keys()}
    save_file(tensors, str(tmp_path / "huge.safetensors"), metadata=meta)
    with pytest.raises(PatchError, match=r"huge\.safetensors.*non-finite"):
        apply_patch(model, tmp_path / "huge.safetensors")
    assert _same(model, snap)
