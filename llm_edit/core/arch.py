"""Where things live inside each supported architecture.

One table, keyed by ``config.model_type``. Nothing in llm-edit guesses module paths from a
model's name or class; recipes never name modules. To support a new architecture, add a row
here and to ``TINY_CONFIGS`` in ``models.py``; ``tests/test_arch.py`` then checks every path.

Paths use ``{}`` for the layer index. ``mlp_out`` is the MLP's output projection: the matrix
that ROME/MEMIT/AlphaEdit edit, whose *input* is the key k and whose *output* is the value v.
``mlp_out_transposed`` is True where that module stores its weight as (in, out) instead of
``nn.Linear``'s (out, in) (GPT-2's ``Conv1D``). ``mlp_post_norm`` is the RMS norm some blocks
apply to the MLP's output before adding it to the residual stream (Gemma 2 and 3): a change of
the value then moves the residual only through that norm, which MEMIT's layer loop must invert.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class ArchSpec:
    layers: str  # the ModuleList of transformer blocks
    mlp: str
    mlp_out: str
    attn_out: str
    embed: str
    final_norm: str
    lm_head: str
    mlp_out_transposed: bool = False
    mlp_post_norm: str | None = None

    def layer(self, i: int) -> str:
        return f"{self.layers}.{i}"


_LLAMA_LIKE = ArchSpec(
    layers="model.layers",
    mlp="model.layers.{}.mlp",
    mlp_out="model.layers.{}.mlp.down_proj",
    attn_out="model.layers.{}.self_attn.o_proj",
    embed="model.embed_tokens",
    final_norm="model.norm",
    lm_head="lm_head",
)

# Gemma 2 and 3 (text): Llama's module names, and a norm between the MLP and the residual stream
_GEMMA_POST_NORM = replace(_LLAMA_LIKE, mlp_post_norm="model.layers.{}.post_feedforward_layernorm")

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _GEMMA_POST_NORM,
    "gemma3_text": _GEMMA_POST_NORM,  # Gemma 3 270M/1B: text only
    # Gemma 3 4B and up: the text decoder sits beside a vision tower; only the decoder is edited.
    "gemma3": ArchSpec(
        layers="model.language_model.layers",
        mlp="model.language_model.layers.{}.mlp",
        mlp_out="model.language_model.layers.{}.mlp.down_proj",
        attn_out="model.language_model.layers.{}.self_attn.o_proj",
        embed="model.language_model.embed_tokens",
        final_norm="model.language_model.norm",
        lm_head="lm_head",
        mlp_post_norm="model.language_model.layers.{}.post_feedforward_layernorm",
    ),
    "phi3": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "gpt2": ArchSpec(
        layers="transformer.h",
        mlp="transformer.h.{}.mlp",
        mlp_out="transformer.h.{}.mlp.c_proj",
        attn_out="transformer.h.{}.attn.c_proj",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        mlp_out_transposed=True,
    ),
    "gpt_neox": ArchSpec(
        layers="gpt_neox.layers",
        mlp="gpt_neox.layers.{}.mlp",
        mlp_out="gpt_neox.layers.{}.mlp.dense_4h_to_h",
        attn_out="gpt_neox.layers.{}.attention.dense",
        embed="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        lm_head="lm_head",  # "embed_out" before transformers 5
    ),
    "gptj": ArchSpec(
        layers="transformer.h",
        mlp="transformer.h.{}.mlp",
        mlp_out="transformer.h.{}.mlp.fc_out",
        attn_out="transformer.h.{}.attn.out_proj",
        embed="transformer.wte",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
    ),
}


class UnsupportedArchitecture(ValueError):
    pass


def arch_of(model: torch.nn.Module) -> ArchSpec:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedArchitecture(
            f"llm-edit has no architecture entry for model_type={model_type!r}. "
            f"Supported: {', '.join(sorted(ARCHITECTURES))}. To add it, write an ArchSpec row in "
            "llm_edit/arch.py (module paths of the MLP output projection, attention output, "
            "embeddings, final norm and LM head; print(model) shows them) and a tiny config in "
            "llm_edit/models.py so tests/test_arch.py checks it."
        ) from None


def hidden_size(model: torch.nn.Module) -> int:
    """The residual stream's width (multimodal configs keep ``hidden_size`` in a sub-config)."""
    return model.get_input_embeddings().weight.shape[1]


def num_layers(model: torch.nn.Module) -> int:
    return len(model.get_submodule(arch_of(model).layers))


def mlp_out_module(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    return model.get_submodule(arch_of(model).mlp_out.format(layer))


def mlp_out_weight_name(model: torch.nn.Module, layer: int) -> str:
    return arch_of(model).mlp_out.format(layer) + ".weight"


def as_out_in(weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    """View an MLP output weight as (d_out, d_in), whatever its storage layout."""
    return weight.T if transposed else weight
