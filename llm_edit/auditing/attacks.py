"""The audit's attacks on an unlearned model: quantization (GGUF's Q8_0 and Q4_0 through the
``gguf`` package's own quantizer) and relearning (a LoRA copy fine-tuned for a fixed budget)."""
from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING

import torch

from ..unlearning.items import ForgetItem, Formatting

if TYPE_CHECKING:  # the config's name only, for annotations
    from .probes import AuditConfig


def quantizable(model) -> list[str]:
    """Names of the 2-D weights inside the transformer blocks (what GGUF quantizes to Q4/Q8;
    embeddings, the head and norms are left as they are)."""
    from ..core.arch import arch_of, num_layers

    spec = arch_of(model)
    prefixes = tuple(spec.layer(i) + "." for i in range(num_layers(model)))
    return [n for n, p in model.named_parameters() if p.ndim == 2 and n.startswith(prefixes)
            and p.shape[-1] % 32 == 0]


@contextlib.contextmanager
def quantized(model, kind: str):
    """The model's block weights rounded through GGUF ``kind`` (Q8_0 or Q4_0: per group of 32,
    one scale each, round to nearest) and back to float; restored bit for bit on exit."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    qtype = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0}[kind]
    params = dict(model.named_parameters())
    saved = {}
    try:
        with torch.no_grad():
            for name in quantizable(model):
                p = params[name]
                saved[name] = p.detach().clone()
                w = p.detach().float().cpu().numpy().astype(np.float32)
                p.copy_(torch.from_numpy(dequantize(quantize(w, qtype), qtype).reshape(w.shape)).to(p))
        yield model
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


def relearned(model, tok, train_items: list[ForgetItem], config: AuditConfig, fmt: Formatting):
    """A copy of ``model`` fine-tuned (LoRA, merged) on ``train_items`` for a fixed budget."""
    from ..unlearning.finetune import FinetuneConfig, finetune

    clone = copy.deepcopy(model)
    cfg = FinetuneConfig(epochs=None, steps=config.relearn_steps, lr=config.relearn_lr,
                         batch_size=config.relearn_batch_size, full_finetune=False, lora_r=config.relearn_lora_r,
                         lora_alpha=2.0 * config.relearn_lora_r, use_chat_template=fmt.use_chat_template,
                         system_prompt=fmt.system_prompt, seed=config.seed, max_length=160)
    tuned, _, _ = finetune(clone, tok, train_items, cfg, progress=False, desc="relearning")
    return tuned
