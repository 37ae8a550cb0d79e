"""RMU, representation misdirection for unlearning (Li et al. 2024, "The WMDP Benchmark", §5).

The output of block ``layer`` on forget tokens is pushed toward c·u, a fixed random unit
vector u scaled by ``steering_coeff`` c (``losses.rmu_forget``), while on retain tokens it is
held at the original model's (``losses.rmu_retain``, weighted by ``alpha``).

Deviations: the paper updates only the MLPs of layers ``layer``-2..``layer`` with full
weights; here the LoRA adapter on every linear layer is trained (layers after ``layer`` get
no gradient, so in effect layers 0..``layer`` move). Forget and retain terms use all answer
tokens (the paper uses every token of its raw-text corpora; for text items that is the same).

``layer: auto`` steers the block where causal tracing finds the facts (``locating.average.auto_layers``),
resolved by ``llm_edit.forget`` before training and recorded in the manifest.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ...core.config import ConfigError
from ...unlearning import losses
from ..contract import TrainConfig


@dataclass
class RMUConfig(TrainConfig):
    layer: int | str = 7  # the block whose output is steered (WMDP: 7 of Zephyr-7B's 32), or "auto"
    steering_coeff: float = 6.5  # c (WMDP: 6.5 for Zephyr-7B)
    alpha: float = 1200.0  # retain weight (WMDP: 1200 for Zephyr-7B)

    def validate(self) -> None:
        super().validate()
        if isinstance(self.layer, str) and self.layer != "auto":
            raise ValueError(f"layer must be a block index or 'auto', got {self.layer!r}")
        if isinstance(self.layer, int) and self.layer < 0:
            raise ValueError("layer must be a block index >= 0")


def prepare(trainer, config) -> torch.Tensor:
    """The control vector c·u: u uniform in [0, 1)^d then normalised, as in WMDP's code."""
    from ...core.arch import hidden_size, num_layers

    model = trainer.base_model
    if config.layer >= num_layers(model):
        raise ConfigError(f"layer {config.layer} does not exist: the model has {num_layers(model)} blocks")
    generator = torch.Generator().manual_seed(config.seed)
    u = torch.rand(hidden_size(model), generator=generator)
    return (u / u.norm() * config.steering_coeff).to(trainer.device)


def loss(ctx, forget, retain, config, control):
    forget_batch = ctx.batch(forget)
    retain_batch = ctx.batch(retain) if retain else None
    h_forget, h_retain = ctx.forward(forget_batch, retain_batch, hidden_layer=config.layer)
    forget_loss = losses.rmu_forget(h_forget, control, (forget_batch.labels != -100).float())
    if retain_batch is None:
        retain_loss = torch.zeros((), device=forget_loss.device)
    else:
        (frozen,) = ctx.reference(retain_batch, hidden_layer=config.layer)
        retain_loss = losses.rmu_retain(h_retain, frozen, (retain_batch.labels != -100).float())
    total = forget_loss + config.alpha * retain_loss
    return total, {"forget": forget_loss.detach(), "retain": retain_loss.detach()}


def resolve(model, tok, config, progress: bool):
    """``layer: auto``: the block where causal tracing finds the facts, on the original model."""
    if config.layer != "auto":
        return config, None
    from ...locating.average import auto_layers

    (layer,), located = auto_layers(model, tok, 1, progress=progress)
    return dataclasses.replace(config, layer=layer), dict(located, requested="auto")
