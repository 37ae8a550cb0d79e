"""What an unlearning method sees: ``TrainConfig`` (the recipe keys every unlearner shares; a
method's config extends it) and ``StepContext`` (what its loss may do in one micro-step). The
loop that calls the loss is ``trainer.Trainer``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..core import head
from . import losses
from .items import ForgetItem, TrainBatch, collate

if TYPE_CHECKING:
    from .trainer import Trainer


@dataclass
class TrainConfig:
    """Hyper-parameters every unlearner shares (recipe keys; method configs add their own)."""

    steps: int = 20  # optimizer steps (an upper bound when early stopping is on)
    lr: float = 1e-4
    batch_size: int = 4  # forget items per process per micro-step
    retain_batch_size: int = 4  # retain items per process per micro-step
    grad_accum: int = 1
    retain_weight: float = 1.0  # α of "forget loss + α · retain loss"
    retain_loss: str = "nll"  # nll | kl (KL(π_ref‖π_θ) on answer tokens)
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_modules: str = "all-linear"  # all-linear | mlp | attention: which linear layers get LoRA
    lora_layers: list[int] | None = None  # block indices to adapt (None: all)
    full_finetune: bool = False  # train every weight instead of a LoRA adapter on all linear layers
    # with full_finetune: train only this fraction of the blocks' weight matrices, those with the
    # largest forget-loss gradient (SURE, Zhang et al. 2025 §5): large steps where they matter, so
    # forgetting survives quantization without moving the rest of the model
    saliency_fraction: float | None = None
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0  # 0 turns clipping off
    gradient_checkpointing: bool = False
    max_length: int = 128  # tokens per sequence (answers are cut, prompts never)
    use_chat_template: bool = True  # for question/answer items, when the tokenizer has one
    system_prompt: str | None = None  # None: the chat template's own default
    retain_samples: int = 64  # without a retain set (or with retain_generic): this many texts sampled from the model ...
    retain_sample_tokens: int = 64  # ... of this many tokens each
    # ... and this many shipped known facts per forgotten fact that share its object or relation
    # (the facts forgetting damages first; expand.protective_retain)
    protect_neighbours: int = 0
    # with a retain set given, also keep the model on the sampled texts: a retain set of one
    # domain (TOFU's authors) holds that domain, not the general text a user's perplexity is taken on
    retain_generic: bool = False
    expand: str = "none"  # none | forms | forms+paraphrases: also train on the other forms (expand.py)
    # sharpness-aware unlearning (Fan et al., ICML 2025, arXiv 2502.05374): the forget loss is
    # taken at the worst weights within this L2 radius of the trainable ones (trainer.py); 0: off
    sam_rho: float = 0.0
    stop_forget_prob: float | None = None  # stop once mean P(forget answer) <= this
    # the step cap while a stop is in force (stop_forget_prob, or forget's holdout): a recipe with
    # a fixed count for users without a stop can run longer for those with one (None: steps)
    stop_steps: int | None = None
    eval_every: int = 5  # steps between early-stopping checks
    checkpoint_every: int = 0  # 0: no checkpoints
    seed: int = 0

    def validate(self) -> None:
        if self.retain_loss not in ("nll", "kl"):
            raise ValueError(f"retain_loss must be 'nll' or 'kl', got {self.retain_loss!r}")
        for name in ("steps", "batch_size", "retain_batch_size", "grad_accum", "lora_r", "max_length",
                     "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.stop_steps is not None and self.stop_steps < 1:
            raise ValueError("stop_steps must be at least 1 (or null)")
        if self.lr <= 0:
            raise ValueError("lr must be positive")
        if self.saliency_fraction is not None and not (self.full_finetune and 0 < self.saliency_fraction <= 1):
            raise ValueError("saliency_fraction needs full_finetune: true and a value in (0, 1]")
        if self.expand not in ("none", "forms", "forms+paraphrases"):
            raise ValueError(f"expand must be none, forms or forms+paraphrases, got {self.expand!r}")
        if self.protect_neighbours < 0:
            raise ValueError("protect_neighbours must be >= 0")
        if self.sam_rho < 0:
            raise ValueError("sam_rho must be >= 0")
        if self.lora_modules not in ("all-linear", "mlp", "attention"):
            raise ValueError(f"lora_modules must be all-linear, mlp or attention, got {self.lora_modules!r}")


class StepContext:
    """What a method's loss may do in one micro-step: encode items, run the model (with or
    without gradients), and the shared retain term."""

    def __init__(self, trainer: "Trainer"):
        self._trainer = trainer

    def batch(self, items: list[ForgetItem], answers: list[str] | None = None) -> TrainBatch:
        t = self._trainer
        answers = answers or [None] * len(items)
        encoded = [t.encode(item, answer) for item, answer in zip(items, answers)]
        return collate(encoded, t.pad_id).to(t.device)

    def forward(self, *batches: TrainBatch | None, hidden_layer: int | None = None) -> list:
        """For each batch (None stays None), from the model being trained: its final states with
        the head still to apply (``core.head.HeadStates``: ``logp`` and the retain term apply it
        where they need logits), or the block output of ``hidden_layer``."""
        return self._trainer.run(self._trainer.model, batches, hidden_layer)

    @torch.no_grad()
    def reference(self, *batches: TrainBatch | None, hidden_layer: int | None = None) -> list:
        """The same for the model before unlearning (adapter disabled, or the frozen copy)."""
        with self._trainer.reference_model() as ref:
            return self._trainer.run(ref, batches, hidden_layer)

    @staticmethod
    def logp(out: head.HeadStates, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence log π(answer | prompt) and the answer's token count."""
        return head.token_logprobs(out, batch.labels)

    def retain_term(self, out: head.HeadStates | None, batch: TrainBatch | None, config: TrainConfig) -> torch.Tensor:
        """NLL or KL(π_ref‖π_θ) on the retain batch's answer tokens (0 without a retain batch)."""
        if batch is None:
            return torch.zeros((), device=self._trainer.device)
        if config.retain_loss == "nll":
            return losses.nll(*self.logp(out, batch))
        # the reference's head runs after its context closed: LoRA never adapts the head (trainer.lora_targets)
        # and full fine-tuning's reference is a frozen copy, so it is the reference's head either way
        (ref,) = self.reference(batch)
        per_token, rows = head.per_position(losses.token_kl, out, ref, batch.labels)
        return losses.sequence_mean(per_token, rows, batch.labels.shape[0])

    def with_retain(self, forget_loss: torch.Tensor, retain_out, retain_batch, config: TrainConfig):
        """``forget + α·retain`` and the parts to log: how every method with a retain term ends."""
        retain_loss = self.retain_term(retain_out, retain_batch, config)
        total = forget_loss + config.retain_weight * retain_loss
        return total, {"forget": forget_loss.detach(), "retain": retain_loss.detach()}
