"""Gradient ascent: minimise −NLL of the forget answers (``losses.grad_ascent``)."""
from __future__ import annotations

from dataclasses import dataclass

from ...unlearning import losses
from ..contract import TrainConfig


@dataclass
class GradAscentConfig(TrainConfig):
    """Only the shared training keys; there is no retain term (use grad_diff for one)."""


def loss(ctx, forget, retain, config, state):
    batch = ctx.batch(forget)
    (out,) = ctx.forward(batch)
    forget_loss = losses.grad_ascent(*ctx.logp(out, batch))
    return forget_loss, {"forget": forget_loss.detach()}
