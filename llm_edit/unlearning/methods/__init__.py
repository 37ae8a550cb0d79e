"""The registry of unlearning methods: the one place an unlearner is added.

An unlearner is a small unit: a typed config (``TrainConfig``'s shared keys plus its own) and
``loss(ctx, forget_items, retain_items, config, state) -> (loss, parts)``, computed for one
micro-batch through a ``train.StepContext``. ``prepare(trainer, config) -> state`` optionally
runs once before training. The loop, LoRA, accelerate, checkpoints and manifests live in
``llm_edit.unlearning.trainer`` and ``llm_edit.editing.edit`` and are the same for every method.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ...core.registry import Registry
from . import grad_ascent, grad_diff, idk, npo, rmu, simnpo


@dataclass(frozen=True)
class Unlearner:
    name: str
    config: type
    loss: Callable
    needs_retain: bool
    needs_reference: bool
    summary: str
    prepare: Callable | None = None
    # resolve(model, tok, config, progress) -> (config, located): settings that depend on the
    # original model (RMU's layer: auto), run before any adapter exists
    resolve: Callable | None = None


UNLEARNERS: Registry[Unlearner] = Registry("unlearning method", {u.name: u for u in [
    Unlearner("grad_ascent", grad_ascent.GradAscentConfig, grad_ascent.loss, False, False,
              "gradient ascent on the forget answers (no retain term; collapses if run long)"),
    Unlearner("grad_diff", grad_diff.GradDiffConfig, grad_diff.loss, True, False,
              "gradient ascent on forget + NLL or KL on retain"),
    Unlearner("npo", npo.NPOConfig, npo.loss, True, True,
              "negative preference optimisation against the model before unlearning, + retain term"),
    Unlearner("simnpo", simnpo.SimNPOConfig, simnpo.loss, True, False,
              "reference-free, length-normalised NPO, + retain term"),
    Unlearner("idk", idk.IdkConfig, idk.loss, True, False,
              "fine-tune forget questions toward 'I don't know' answers, + retain term", idk.prepare),
    Unlearner("idk_dpo", idk.IdkDPOConfig, idk.dpo_loss, True, True,
              "DPO preferring 'I don't know' over the forget answer, + retain term", idk.prepare),
    Unlearner("rmu", rmu.RMUConfig, rmu.loss, True, True,
              "steer one layer's activations on forget data toward a random direction (WMDP)", rmu.prepare,
              rmu.resolve),
]})


def get_unlearner(name: str) -> Unlearner:
    return UNLEARNERS.lookup(name)
