"""SURE-style saliency-restricted unlearning: only the chosen weight matrices move."""
import pytest
import torch

from llm_edit import forget
from llm_edit.core.config import ConfigError
from llm_edit.unlearning.items import parse_item

FORGET = [{"question": "Who wrote the tiny book?", "answer": "Ann Smith wrote it."},
          {"question": "Where was Ann Smith born?", "answer": "In Paris."}]
RETAIN = [{"question": "Who wrote the other book?", "answer": "Bob Jones did."}]


def test_only_salient_weights_change_and_the_model_stays_trainable(tiny):
    model, tok = tiny("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = forget(model, tok, [parse_item(x) for x in FORGET], [parse_item(x) for x in RETAIN], "grad_diff",
                    progress=False, full_finetune=True, saliency_fraction=0.25, steps=3, lr=1e-2)
    salient = result.manifest["training"]["salient_weights"]
    blocks = [n for n, p in model.named_parameters() if p.ndim == 2 and ".layers." in n]
    assert len(salient) == round(0.25 * len(blocks))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(salient)
    assert all(p.requires_grad for p in model.parameters())


def test_saliency_needs_full_finetuning(tiny):
    model, tok = tiny("llama")
    with pytest.raises(ConfigError, match="saliency_fraction"):
        forget(model, tok, [parse_item(x) for x in FORGET], None, "grad_ascent", progress=False,
               saliency_fraction=0.5)
