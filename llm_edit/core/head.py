"""The language-model head, applied where a loss needs it and in chunks.

A causal LM's forward ends with vocabulary-sized logits at every position. Training losses need
them only at answer tokens, and on a 262,144-entry vocabulary (Gemma 3) they are most of an
unlearning step's memory: 16 retain texts of 80 tokens give 1.3 GB of float32 logits, and the
log-softmax, the reference's logits and the gradient each as much again (11.4 GiB peak for
``forget --method npo`` on Gemma 3 270M). Here the model runs without its head
(``deferred_head``), and the losses apply it to the positions they use, a chunk of positions at
a time under activation checkpointing: only one chunk's logits exist at once, forward or
backward, for one more head multiplication per chunk in the backward pass.

The model's forward still runs through whatever wraps it (PEFT, accelerate, DDP, FSDP): only
the head's own ``forward`` is replaced while the context is open, so gradient synchronisation
and adapters work as before. One case does not: DDP with ``find_unused_parameters=True`` and a
trained head not tied to the embeddings (full fine-tuning) would find the head unused from the
outputs; accelerate's default leaves that search off.
"""
from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

from .arch import arch_of

# Logits (float32) of at most this many bytes are computed at once; a loss whose logits fit runs
# in one piece, without checkpointing: 341 positions on the default model's 49k vocabulary, 64 on
# Gemma's 262k. `forget --method npo` on the 10 dev facts, peak RSS and training time, 2 cores:
# the training phase (psutil, in-process) on Gemma 6.5 GiB at 256 MiB, 4.25 GiB (82.8 s) at
# 64 MiB; SmolLM2 5.39 GiB (84.5 s) at 256 MiB, 4.43 GiB (92.8 s) at 64 MiB. The whole command on
# Gemma (/usr/bin/time): 11.4 GiB with whole logits, 5.5 GiB at 64 MiB. A chunk's working set is
# a few times CHUNK_BYTES (logits, their float copy, log-softmax; two models' for the KL).
# (Times on this machine vary by up to 40% between runs of the same work.)
CHUNK_BYTES = 2**26


class HeadStates(NamedTuple):
    """The final norm's output of a batch, the head not yet applied."""

    states: torch.Tensor  # (batch, seq, d)
    head: Callable[[torch.Tensor], torch.Tensor]  # states (..., d) -> logits (..., vocab)
    vocab: int


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside DDP/accelerate and PEFT wrappers (whose module names the
    architecture table knows)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_of(model: torch.nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """The head as the model applies it: its output layer, then the final logit soft-capping
    where the config has one (Gemma 2: logits = c·tanh(logits/c))."""
    inner = unwrapped(model)
    lm_head = inner.get_submodule(arch_of(inner).lm_head)
    cap = getattr(inner.config, "final_logit_softcapping", None)
    vocab = lm_head.weight.shape[0]
    if not cap:
        return lm_head, vocab
    return (lambda states: torch.tanh(lm_head(states) / cap) * cap), vocab


@contextlib.contextmanager
def deferred_head(model: torch.nn.Module):
    """Run ``model`` without computing its logits: while open, the LM head records its input and
    returns a (…, 1) placeholder. Yields the list of recorded inputs, one per forward call.
    The head's forward is restored on exit, also when the body raises."""
    inner = unwrapped(model)
    lm_head = inner.get_submodule(arch_of(inner).lm_head)
    recorded: list[torch.Tensor] = []
    had_own = "forward" in lm_head.__dict__
    own = lm_head.__dict__.get("forward")

    def record(states, *args, **kwargs):
        recorded.append(states)
        return states[..., :1]

    lm_head.forward = record
    try:
        yield recorded
    finally:
        if had_own:
            lm_head.forward = own
        else:
            del lm_head.forward


def final_states(model: torch.nn.Module, **inputs) -> HeadStates:
    """One forward of ``model`` (any wrapper) without the head: the states the head would take.

    The wrapper's output (the placeholder) is added times zero: FSDP finishes its backward
    (moving sharded gradients into ``.grad``) from hooks on the root module's outputs, which
    must therefore be part of the loss."""
    with deferred_head(model) as recorded:
        placeholder = model(**inputs).logits
    head, vocab = head_of(model)
    return HeadStates(recorded[-1] + placeholder * 0, head, vocab)


def _in_chunks(fn, vocab: int, *tensors: torch.Tensor) -> torch.Tensor:
    """``fn`` over the rows of ``tensors`` (positions, first dimension): at once when their
    logits fit ``CHUNK_BYTES``, else a chunk at a time, each under checkpointing (its logits are
    recomputed in the backward pass instead of kept)."""
    n = tensors[0].shape[0]
    per_chunk = max(1, CHUNK_BYTES // (4 * vocab))
    if n <= per_chunk:
        return fn(*tensors)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    parts = []
    for k in range(0, n, per_chunk):
        piece = [t[k:k + per_chunk] for t in tensors]
        parts.append(checkpoint(fn, *piece, use_reentrant=False) if needs_grad else fn(*piece))
    return torch.cat(parts)


def token_logprobs(out: HeadStates, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of the label tokens' log-probabilities and their number (as
    ``core.text.token_logprobs`` on full logits), the head applied at label positions only."""
    rows, cols = (labels != -100).nonzero(as_tuple=True)

    def picked(states, targets):
        return torch.log_softmax(out.head(states).float(), dim=-1).gather(-1, targets[:, None])[:, 0]

    values = _in_chunks(picked, out.vocab, out.states[rows, cols], labels[rows, cols])
    batch = labels.shape[0]
    total = torch.zeros(batch, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    return total, (labels != -100).sum(-1)


def per_position(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], out: HeadStates, ref: HeadStates,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(logits, ref_logits)`` (one value per position) at the label positions of ``out`` and
    ``ref``, chunked; returns the values and their sequence index."""
    rows, cols = (labels != -100).nonzero(as_tuple=True)

    def value(states, ref_states):
        return fn(out.head(states), ref.head(ref_states))

    return _in_chunks(value, out.vocab, out.states[rows, cols], ref.states[rows, cols]), rows
