import pytest
import torch

from llm_edit.core.arch import arch_of
from llm_edit.core.hooks import Trace


def _batch(tok):
    return tok(["The Eiffel Tower is in"], return_tensors="pt")


def test_trace_reads_inputs_and_outputs(tiny):
    model, tok = tiny("llama")
    name = arch_of(model).mlp_out.format(1)
    module = model.get_submodule(name)
    with Trace(model, [name], retain_input=True, retain_output=True) as tr:
        model(**_batch(tok))
    assert torch.allclose(module(tr[name].input), tr[name].output)
    assert not module._forward_hooks


def test_edit_output_changes_the_forward_pass_and_is_removed(tiny):
    model, tok = tiny("gpt2")
    name = arch_of(model).mlp_out.format(2)
    clean = model(**_batch(tok)).logits
    with Trace(model, [name], edit_output=lambda out, n: out + 1.0):
        edited = model(**_batch(tok)).logits
    after = model(**_batch(tok)).logits
    assert not torch.allclose(clean, edited)
    assert torch.equal(clean, after)


def test_hooks_are_removed_when_the_body_raises(tiny):
    model, tok = tiny("llama")
    name = arch_of(model).mlp_out.format(0)
    with pytest.raises(RuntimeError, match="boom"):
        with Trace(model, [name], retain_output=True):
            raise RuntimeError("boom")
    assert not model.get_submodule(name)._forward_hooks


def test_bad_module_name_registers_nothing(tiny):
    model, _ = tiny("llama")
    good = arch_of(model).mlp_out.format(0)
    with pytest.raises(AttributeError):
        with Trace(model, [good, "model.no_such_module"]):
            pass
    assert not model.get_submodule(good)._forward_hooks


def test_stop_ends_the_forward_pass_after_the_traced_module(tiny):
    model, tok = tiny("llama")
    spec = arch_of(model)
    early, late = spec.mlp_out.format(0), spec.mlp_out.format(3)
    seen = []
    handle = model.get_submodule(late).register_forward_hook(lambda *a: seen.append(1))
    try:
        with Trace(model, [early], retain_input=True, stop=True) as tr:
            model(**_batch(tok))
    finally:
        handle.remove()
    assert tr[early].input is not None and seen == []
