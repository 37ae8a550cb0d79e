"""NPO (Zhang et al. 2024): ``losses.npo`` on the forget answers against the model before
unlearning (the adapter disabled), plus α·retain."""
from __future__ import annotations

from dataclasses import dataclass

from ...unlearning import losses
from ..contract import TrainConfig


@dataclass
class NPOConfig(TrainConfig):
    beta: float = 0.1  # the paper's β: smaller behaves more like gradient ascent

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise ValueError("beta must be positive")


def loss(ctx, forget, retain, config, state):
    forget_batch = ctx.batch(forget)
    retain_batch = ctx.batch(retain) if retain else None
    forget_out, retain_out = ctx.forward(forget_batch, retain_batch)
    logp, _ = ctx.logp(forget_out, forget_batch)
    (ref_out,) = ctx.reference(forget_batch)
    ref_logp, _ = ctx.logp(ref_out, forget_batch)
    forget_loss = losses.npo(logp, ref_logp, config.beta)
    return ctx.with_retain(forget_loss, retain_out, retain_batch, config)
