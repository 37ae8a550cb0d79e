"""Gradient difference (TOFU, Maini et al. 2024, §4; Liu et al. 2022): ascend the forget
answers' NLL while descending the retain term: L = −NLL(forget) + α·retain."""
from __future__ import annotations

from dataclasses import dataclass

from ...unlearning import losses
from ..contract import TrainConfig


@dataclass
class GradDiffConfig(TrainConfig):
    """The shared keys; ``retain_loss`` picks NLL (the paper's) or KL to the original model."""


def loss(ctx, forget, retain, config, state):
    forget_batch = ctx.batch(forget)
    retain_batch = ctx.batch(retain) if retain else None
    forget_out, retain_out = ctx.forward(forget_batch, retain_batch)
    forget_loss = losses.grad_ascent(*ctx.logp(forget_out, forget_batch))
    return ctx.with_retain(forget_loss, retain_out, retain_batch, config)
