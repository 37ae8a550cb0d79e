"""SimNPO (Fan et al. 2024): ``losses.simnpo``, NPO without a reference model and with the
sequence log-probability divided by the answer length, plus α·retain."""
from __future__ import annotations

from dataclasses import dataclass

from ...unlearning import losses
from ..contract import TrainConfig


@dataclass
class SimNPOConfig(TrainConfig):
    beta: float = 2.5  # the paper's β for TOFU
    gamma: float = 0.0  # the paper's reward margin γ (same sign convention)

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise ValueError("beta must be positive")


def loss(ctx, forget, retain, config, state):
    forget_batch = ctx.batch(forget)
    retain_batch = ctx.batch(retain) if retain else None
    forget_out, retain_out = ctx.forward(forget_batch, retain_batch)
    forget_loss = losses.simnpo(*ctx.logp(forget_out, forget_batch), config.beta, config.gamma)
    return ctx.with_retain(forget_loss, retain_out, retain_batch, config)
