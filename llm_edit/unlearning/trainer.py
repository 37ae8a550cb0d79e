"""The unlearning training loop: LoRA (or full fine-tuning) through ``accelerate``.

One loop serves every unlearner; a method only supplies its loss (``llm_edit.unlearning.methods``;
what a loss sees is in ``contract.py``).
The same code runs on CPU, one GPU, or several processes under ``accelerate launch`` (DDP,
FSDP or DeepSpeed from accelerate's own config):

* **Batches.** Step s consumes a *global* batch of ``batch_size × grad_accum × processes``
  forget items, a fixed slice of one seeded stream of per-epoch permutations; process p takes
  its share of each micro-step. The slices depend only on (seed, step), so a 2-process run sees
  the same items per optimizer step as a 1-process run with twice the accumulation, and a
  resumed run continues exactly where it stopped. Retain items come from a second stream.
* **Reference model.** NPO, KL and IdkDPO compare with the model before unlearning: with LoRA
  that is the same network with the adapter disabled (no second copy in memory); with full
  fine-tuning a frozen copy.
* **Checkpoints** (``checkpoint_dir``, every ``checkpoint_every`` steps; ``checkpoints.py``)
  hold the trainable weights and optimizer state as safetensors plus a JSON state: no pickles,
  resumable.
* **Sharpness-aware unlearning** (``sam_rho`` > 0; Fan et al., ICML 2025, "Towards LLM
  Unlearning Resilient to Relearning Attacks", arXiv 2502.05374, §4): each step minimises
  ℓ_f(θ + ε) + α·ℓ_r(θ) with SAM's first-order worst case ε = ρ ∇ℓ_f(θ) / ‖∇ℓ_f(θ)‖ over the
  trainable weights (the forget loss is the method's own loss without a retain batch). A flat
  forget loss around θ is what keeps a few relearning steps from bringing the answers back.
  Cost: two more forward/backward passes of the forget batch per micro-step. One process only:
  the perturbation would need the gradient reduced across processes first.
* **Early stopping** when the mean forget-answer probability falls to ``stop_forget_prob``, or
  when a user callback returns True, so users do not over-unlearn. ``forget(holdout=...)`` sets
  that level to the original model's ``mean_answer_probability`` of answers it never saw.
"""
from __future__ import annotations

import contextlib
import copy
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from ..core import head
from ..core.config import ConfigError
from ..core.text import pad_id
from . import losses
from .checkpoints import load_checkpoint, save_checkpoint
from .contract import StepContext, TrainConfig
from .items import ForgetItem, Formatting, collate, encode


def _stream(n: int, seed: int, start: int, count: int) -> list[int]:
    """Items start .. start+count of the concatenation of seeded per-epoch permutations of range(n)."""
    out = []
    epoch, offset = divmod(start, n)
    while len(out) < count:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        out += perm[offset:]
        epoch, offset = epoch + 1, 0
    return out[:count]


def lora_targets(model, modules: str, layers: list[int] | None) -> list[str] | str:
    """Full names of the linear layers to adapt, from the architecture table (never from
    module-name guesses): every linear layer inside the chosen blocks' MLP, attention or both."""
    from transformers.pytorch_utils import Conv1D

    from ..core.arch import arch_of, num_layers

    if modules == "all-linear" and layers is None:
        return "all-linear"  # peft's own selection: every linear layer except the LM head
    spec = arch_of(model)
    n = num_layers(model)
    chosen = range(n) if layers is None else layers
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise ConfigError(f"lora_layers {bad} do not exist: the model has {n} blocks")
    if modules == "mlp":
        prefixes = [spec.mlp.format(i) + "." for i in chosen]
    elif modules == "attention":
        prefixes = [spec.attn_out.format(i).rsplit(".", 1)[0] + "." for i in chosen]
    else:
        prefixes = [spec.layer(i) + "." for i in chosen]
    names = [name for name, m in model.named_modules()
             if isinstance(m, (torch.nn.Linear, Conv1D)) and any(name.startswith(p) for p in prefixes)]
    if not names:
        raise ConfigError(f"no linear layers found for lora_modules={modules!r}, lora_layers={layers}")
    return names


class Trainer:
    """One unlearning run: the wrapped model (LoRA or full fine-tuning), its optimizer and data
    streams; ``train()`` runs the loop and returns the log, ``restore()`` undoes everything."""

    def __init__(self, model, tok, forget: list[ForgetItem], retain: list[ForgetItem] | None, unlearner,
                 config: TrainConfig, *, accelerator=None, progress: bool = True,
                 callback: Callable | None = None, checkpoint_dir: str | Path | None = None,
                 desc: str | None = None):
        from accelerate import Accelerator

        self.tok, self.forget, self.retain = tok, forget, retain
        self.unlearner, self.config, self.progress, self.callback = unlearner, config, progress, callback
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.desc = desc or f"{unlearner.name} unlearning"
        self.fmt = Formatting(config.use_chat_template, config.system_prompt)
        self.pad_id = pad_id(tok)
        device = next(model.parameters()).device
        self.accelerator = accelerator or Accelerator(cpu=device.type == "cpu")
        self.device = self.accelerator.device
        self._encoded: dict = {}
        self.base_model = model
        self.log: list[dict] = []
        self.stopped_early: str | None = None
        self._snapshot = None
        self._ref_copy = None
        self.salient: list[str] | None = None
        self.tokens_seen = 0
        from accelerate.utils import set_seed

        set_seed(config.seed)  # before LoRA's random initialisation, so runs are reproducible
        self._wrap(model)

    # -- model set-up -------------------------------------------------------------------------
    def _wrap(self, model) -> None:
        c = self.config
        if c.full_finetune:
            # A failed run restores these; the reference copy serves NPO/KL/DPO/RMU.
            self._snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if self.unlearner.needs_reference or c.retain_loss == "kl":
                self._ref_copy = copy.deepcopy(model).eval().requires_grad_(False)
            trainable = model
            if c.saliency_fraction is not None:
                self.salient = self._restrict_to_salient(model, c.saliency_fraction)
        else:
            from peft import LoraConfig, get_peft_model

            from ..core.arch import arch_of

            lora = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                              target_modules=lora_targets(model, c.lora_modules, c.lora_layers),
                              # GPT-2's Conv1D stores (in, out): what peft would switch to, with a warning
                              fan_in_fan_out=arch_of(model).mlp_out_transposed, task_type="CAUSAL_LM")
            with warnings.catch_warnings():  # peft reads transformers' deprecated alias; nothing for users to fix
                warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                        category=FutureWarning)
                trainable = get_peft_model(model, lora)
        if c.gradient_checkpointing:
            enable = getattr(trainable, "activation_checkpointing_enable", None)  # transformers >= 5's name
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                trainable.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(trainable, "enable_input_require_grads"):
                trainable.enable_input_require_grads()
            trainable.config.use_cache = False
        self.peft_model = None if c.full_finetune else trainable
        params = [p for p in trainable.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        warm = max(c.warmup_steps, 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.model, self.optimizer = self.accelerator.prepare(trainable, self.optimizer)
        self.params = params

    def _restrict_to_salient(self, model, fraction: float) -> list[str]:
        """Freeze every parameter except the ``fraction`` of block weight matrices with the largest
        gradient norm of the forget NLL (per element, so wide and narrow matrices compare), as SURE's
        module-level saliency map (Zhang et al. 2025, eq. 4). Returns the trained names."""
        from ..core.arch import arch_of, num_layers

        spec = arch_of(model)
        prefixes = tuple(spec.layer(i) + "." for i in range(num_layers(model)))
        candidates = {n: p for n, p in model.named_parameters() if p.ndim == 2 and n.startswith(prefixes)}
        model.zero_grad(set_to_none=True)
        was_training = model.training
        model.train()
        device = next(model.parameters()).device
        for i in range(0, len(self.forget), 8):
            batch = collate([self.encode(x) for x in self.forget[i:i + 8]], self.pad_id).to(device)
            out = head.final_states(model, input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                    use_cache=False)
            losses.nll(*head.token_logprobs(out, batch.labels)).backward()
        model.train(was_training)
        score = {n: float(p.grad.norm()) / p.numel() ** 0.5 for n, p in candidates.items() if p.grad is not None}
        keep = sorted(score, key=score.get, reverse=True)[: max(1, round(fraction * len(score)))]
        model.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            p.requires_grad_(n in keep)
        return keep

    def restore(self) -> torch.nn.Module:
        """Undo everything: the base model exactly as it was before training."""
        if self._snapshot is not None:
            self.base_model.load_state_dict(self._snapshot)
            return self.base_model
        if self.peft_model is not None:
            return self.peft_model.unload()
        return self.base_model

    @contextlib.contextmanager
    def reference_model(self):
        if self._ref_copy is not None:
            yield self._ref_copy
        elif self.peft_model is not None:
            with self.peft_model.disable_adapter():
                yield self.peft_model
        else:
            raise RuntimeError("this method needs a reference model; full fine-tuning made none")

    # -- data ------------------------------------------------------------------------------------
    def encode(self, item: ForgetItem, answer: str | None = None):
        key = (id(item), answer)
        if key not in self._encoded:
            self._encoded[key] = encode(self.tok, item, self.fmt, self.config.max_length, answer)
        return self._encoded[key]

    def run(self, model, batches, hidden_layer):
        """One forward per batch, each padded only to its own width (joining short forget
        answers with long retain texts would mostly compute padding), the LM head left to the
        losses (``core.head``: at answer tokens only, in chunks on large vocabularies)."""
        results = []
        for b in batches:
            if b is None:
                results.append(None)
                continue
            inputs = dict(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
            if hidden_layer is None:
                results.append(head.final_states(model, **inputs))
            else:
                with head.deferred_head(model):  # RMU reads a block's output: no logits needed
                    results.append(model(**inputs, output_hidden_states=True).hidden_states[hidden_layer + 1])
            self.tokens_seen += int(b.attention_mask.sum())
        return results

    def micro_items(self, step: int, micro: int) -> tuple[list[ForgetItem], list[ForgetItem] | None]:
        c, acc = self.config, self.accelerator
        n_proc, rank = acc.num_processes, acc.process_index
        global_forget = c.batch_size * c.grad_accum * n_proc
        slot = micro * n_proc + rank
        idx = _stream(len(self.forget), c.seed, step * global_forget + slot * c.batch_size, c.batch_size)
        forget = [self.forget[i] for i in idx]
        retain = None
        if self.retain and self.unlearner.needs_retain:
            global_retain = c.retain_batch_size * c.grad_accum * n_proc
            ridx = _stream(len(self.retain), c.seed + 1, step * global_retain + slot * c.retain_batch_size,
                           c.retain_batch_size)
            retain = [self.retain[i] for i in ridx]
        return forget, retain

    # -- evaluation for early stopping ------------------------------------------------------
    def forget_probability(self) -> float:
        return mean_answer_probability(self.model, self.forget, self.encode, self.pad_id, self.device)

    # -- checkpoints (checkpoints.py) ----------------------------------------------------------
    def save_checkpoint(self, step: int) -> None:
        save_checkpoint(self, step)

    def load_checkpoint(self) -> int:
        return load_checkpoint(self)

    def _sharpness_correction(self, ctx: StepContext, forget: list[ForgetItem], state) -> None:
        """Add ∇ℓ_f(θ + ε) − ∇ℓ_f(θ) to the gradients (divided by grad_accum), so that with the
        ordinary backward of the whole loss at θ that follows, the step takes the forget loss at
        SAM's perturbed weights and the retain loss at θ (module docstring)."""
        c = self.config
        params = self.params

        def forget_grads():
            loss, _ = self.unlearner.loss(ctx, forget, None, c, state)
            return torch.autograd.grad(loss, params, allow_unused=True)

        seen = self.tokens_seen  # SAM's two extra passes are not training tokens
        here = forget_grads()
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in here if g is not None))
        if not torch.isfinite(norm) or norm == 0:
            self.tokens_seen = seen
            return
        saved = [p.detach().clone() for p in params]  # (θ + ε) − ε is not θ bit for bit
        with torch.no_grad():
            for p, g in zip(params, here):
                if g is not None:
                    p.add_(g, alpha=float(c.sam_rho / norm))
        try:
            there = forget_grads()
        finally:
            self.tokens_seen = seen
            with torch.no_grad():
                for p, kept in zip(params, saved):
                    p.copy_(kept)
        for p, g0, g1 in zip(params, here, there):
            if g0 is None or g1 is None:
                continue
            correction = (g1 - g0) / c.grad_accum
            p.grad = correction if p.grad is None else p.grad + correction

    # -- the loop --------------------------------------------------------------------------------
    def train(self) -> list[dict]:
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm

        c, acc = self.config, self.accelerator
        if c.sam_rho > 0 and acc.num_processes > 1:
            raise ConfigError("sam_rho: sharpness-aware unlearning runs on one process")
        set_seed(c.seed)
        state = self.unlearner.prepare(self, c) if self.unlearner.prepare else None
        start = self.load_checkpoint()
        ctx = StepContext(self)
        self.model.train()
        bar = tqdm(total=c.steps, initial=start, desc=self.desc, unit="step",
                   disable=not self.progress or not acc.is_main_process)
        try:
            for step in range(start, c.steps):
                t0 = time.perf_counter()
                self.tokens_seen = 0
                parts_sum: dict[str, float] = {}
                for micro in range(c.grad_accum):
                    forget, retain = self.micro_items(step, micro)
                    sync = contextlib.nullcontext() if micro == c.grad_accum - 1 else acc.no_sync(self.model)
                    with sync:
                        if c.sam_rho > 0:
                            self._sharpness_correction(ctx, forget, state)
                        loss, parts = self.unlearner.loss(ctx, forget, retain, c, state)
                        if not torch.isfinite(loss):
                            raise FloatingPointError(f"step {step}: the loss is {float(loss)}")
                        acc.backward(loss / c.grad_accum)
                    for k, v in {"loss": loss.detach(), **parts}.items():
                        parts_sum[k] = parts_sum.get(k, 0.0) + float(v) / c.grad_accum
                if c.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.params, c.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                reduced = acc.reduce(torch.tensor(list(parts_sum.values()), device=self.device), "mean")
                record = {"step": step + 1, **{k: round(float(v), 6) for k, v in zip(parts_sum, reduced)},
                          "lr": self.scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - t0, 3),
                          "tokens": self.tokens_seen}
                if c.stop_forget_prob is not None and ((step + 1) % c.eval_every == 0 or step + 1 == c.steps):
                    record["forget_prob"] = round(self.forget_probability(), 6)
                self.log.append(record)
                bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()
                                 if k not in ("step", "lr", "seconds", "tokens")})
                bar.update(1)
                if c.checkpoint_every and self.checkpoint_dir and (step + 1) % c.checkpoint_every == 0:
                    self.save_checkpoint(step + 1)
                if "forget_prob" in record and record["forget_prob"] <= c.stop_forget_prob:
                    self.stopped_early = f"forget probability {record['forget_prob']:.4g} <= {c.stop_forget_prob}"
                    break
                if self.callback is not None and self.callback(step + 1, record, self.model):
                    self.stopped_early = f"callback stopped at step {step + 1}"
                    break
        finally:
            bar.close()
            self.model.eval()
            if self.salient is not None:  # the frozen rest was frozen only for this run
                for p in self.base_model.parameters():
                    p.requires_grad_(True)
        return self.log

    def effective_batch_size(self) -> int:
        return self.config.batch_size * self.config.grad_accum * self.accelerator.num_processes


@torch.no_grad()
def mean_answer_probability(model, items: list[ForgetItem], encode: Callable, pad: int, device) -> float:
    """Mean over items of exp(mean answer-token log-probability), each encoded by ``encode``
    (the trainer's formatting): the early-stopping statistic. ``evaluating.metrics.answer_probability``
    is the per-item figure of the evaluations; this one goes through ``core.head`` (the LM head in
    chunks, for large vocabularies) as training does."""
    was_training = model.training
    model.eval()
    probs = []
    for i in range(0, len(items), 16):
        batch = collate([encode(x) for x in items[i:i + 16]], pad).to(device)
        out = head.final_states(model, input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        logp, count = head.token_logprobs(out, batch.labels)
        probs += (logp / count.clamp(min=1)).exp().tolist()
    model.train(was_training)
    return sum(probs) / len(probs)
