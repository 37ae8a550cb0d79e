"""Supervised fine-tuning on question/answer (or fact, or text) items: TOFU's first step.

The same loop as unlearning (``train.Trainer``: accelerate, seeded batch streams, checkpoints,
roll-back on failure) with the loss NLL on the answers; full fine-tuning by default, as TOFU
(Maini et al. 2024, §4: AdamW, 5 epochs, lr 1e-5, effective batch 32, weight decay 0.01).
``epochs`` sets the number of optimizer steps from the data size.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from . import losses
from .contract import TrainConfig
from .trainer import Trainer


@dataclass
class FinetuneConfig(TrainConfig):
    """The shared training keys; ``epochs`` (when set) replaces ``steps``."""

    epochs: float | None = 5.0
    full_finetune: bool = True

    def validate(self) -> None:
        super().validate()
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError("epochs must be positive (or null to use steps)")


def _loss(ctx, items, _retain, config, state):
    batch = ctx.batch(items)
    (out,) = ctx.forward(batch)
    loss = losses.nll(*ctx.logp(out, batch))
    return loss, {"nll": loss.detach()}


def finetune(model, tok, items, config: FinetuneConfig, *, progress: bool = True, desc: str = "fine-tuning"):
    """Train ``model`` in place on ``items`` (``ForgetItem`` list); returns (model, log, config), the
    config with its steps resolved from epochs. With a LoRA adapter (``full_finetune: false``) the
    adapter is merged. On failure the model is restored."""
    from .methods import Unlearner

    if config.epochs is not None:
        per_step = config.batch_size * config.grad_accum
        config = dataclasses.replace(config, steps=max(1, math.ceil(config.epochs * len(items) / per_step)))
    spec = Unlearner("finetune", FinetuneConfig, _loss, needs_retain=False, needs_reference=False,
                     summary="NLL on the answers")
    trainer = Trainer(model, tok, list(items), None, spec, config, progress=progress, desc=desc)
    try:
        log = trainer.train()
    except BaseException:
        trainer.restore()
        raise
    tuned = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.peft_model is not None:
        tuned = trainer.peft_model.merge_and_unload()
    return tuned.eval(), log, config
