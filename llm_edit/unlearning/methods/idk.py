"""Toward "I don't know" (TOFU, Maini et al. 2024, §4 "Preference Optimization"): each forget
question gets a refusal string (TOFU's 100 by default, or ``idk_file``, one per line), then

* ``idk``: NLL of the refusal as the answer (``losses.nll``) + α·retain;
* ``idk_dpo``: DPO (``losses.dpo``) preferring the refusal over the forget answer, against the
  model before unlearning, + α·retain.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ...core.config import ConfigError
from ...core.files import DATA_DIR
from ...unlearning import losses
from ..contract import TrainConfig

DEFAULT_REFUSALS = DATA_DIR / "idontknow.txt"


@dataclass
class IdkConfig(TrainConfig):
    idk_file: str | None = None  # refusal strings, one per line (None: TOFU's)


@dataclass
class IdkDPOConfig(TrainConfig):
    idk_file: str | None = None
    beta: float = 0.1  # DPO's β

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise ValueError("beta must be positive")


def refusals(path: str | None) -> list[str]:
    file = Path(path) if path else DEFAULT_REFUSALS
    try:
        lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise ConfigError(f"idk_file {str(file)!r}: no such file") from None
    if not lines:
        raise ConfigError(f"idk_file {str(file)!r} holds no refusal strings")
    return lines


def prepare(trainer, config) -> dict[int, str]:
    """One refusal per forget item, fixed by the seed (the same item always gets the same one)."""
    pool = refusals(config.idk_file)
    rng = random.Random(config.seed)
    return {id(item): rng.choice(pool) for item in trainer.forget}


def loss(ctx, forget, retain, config, state):
    idk_batch = ctx.batch(forget, [state[id(item)] for item in forget])
    retain_batch = ctx.batch(retain) if retain else None
    idk_out, retain_out = ctx.forward(idk_batch, retain_batch)
    forget_loss = losses.nll(*ctx.logp(idk_out, idk_batch))
    return ctx.with_retain(forget_loss, retain_out, retain_batch, config)


def dpo_loss(ctx, forget, retain, config, state):
    win = ctx.batch(forget, [state[id(item)] for item in forget])
    lose = ctx.batch(forget)
    retain_batch = ctx.batch(retain) if retain else None
    win_out, lose_out, retain_out = ctx.forward(win, lose, retain_batch)
    ref_win, ref_lose = ctx.reference(win, lose)
    forget_loss = losses.dpo(ctx.logp(win_out, win)[0], ctx.logp(lose_out, lose)[0],
                             ctx.logp(ref_win, win)[0], ctx.logp(ref_lose, lose)[0], config.beta)
    return ctx.with_retain(forget_loss, retain_out, retain_batch, config)
