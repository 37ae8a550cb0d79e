"""Unlearning losses as pure functions of log-probabilities, logits and hidden states.

Conventions shared by every function here:

* ``logp`` is a sequence log-probability log π(y|x): the sum over the answer tokens (from
  ``text.token_logprobs``), one value per sequence, and ``count`` its number of tokens;
* a batch loss is the *mean over sequences* of a per-sequence loss. Deviation: Hugging Face's
  and open-unlearning's NLL average over all tokens of the batch; a per-sequence mean makes the
  loss independent of how a batch is split across processes and accumulation steps (a
  2-process run then gives the same loss as a 1-process run), and weighs short answers as
  much as long ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def nll(logp: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of the per-token negative log-likelihood −log π(y|x)/|y|."""
    return (-logp / count.clamp(min=1)).mean()


def grad_ascent(logp: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Gradient ascent on the forget set: −NLL (Jang et al. 2023, "Knowledge Unlearning", eq. 1
    with the sign of the maximised objective flipped so that it is minimised). Unbounded below:
    it is what makes pure ascent collapse a model, and why NPO exists."""
    return -nll(logp, count)


def npo(logp: torch.Tensor, logp_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative preference optimisation (Zhang et al. 2024, "Negative Preference Optimization",
    eq. 3): L = −(2/β)·E[log σ(−β·(log π_θ(y|x) − log π_ref(y|x)))].

    At θ = θ_ref it equals (2/β)·log 2; as π_θ(y|x) → 0 it tends to 0 (bounded below, unlike
    gradient ascent), and its gradient is gradient ascent's weighted by
    2·π_θ^β/(π_θ^β + π_ref^β), which vanishes once the answer is unlikely."""
    return (-(2.0 / beta) * F.logsigmoid(-beta * (logp - logp_ref))).mean()


def simnpo(logp: torch.Tensor, count: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """SimNPO (Fan et al. 2024, "Simplicity Prevails", eq. 5), reference-free and length-normalised:
    L = −(2/β)·E[log σ(−(β/|y|)·log π_θ(y|x) − γ)].

    γ is the paper's reward margin γ with the same sign convention (the paper's and
    open-unlearning's default for TOFU is γ = 0); a larger γ keeps pushing longer.
    At log π_θ = 0 and γ = 0 it equals (2/β)·log 2."""
    return (-(2.0 / beta) * F.logsigmoid(-(beta * logp / count.clamp(min=1)) - gamma)).mean()


def dpo(logp_win: torch.Tensor, logp_lose: torch.Tensor, ref_win: torch.Tensor, ref_lose: torch.Tensor,
        beta: float) -> torch.Tensor:
    """Direct preference optimisation (Rafailov et al. 2023, eq. 7):
    L = −E[log σ(β·((log π_θ(y_w|x) − log π_ref(y_w|x)) − (log π_θ(y_l|x) − log π_ref(y_l|x))))].
    For unlearning (TOFU's IdkDPO) y_w is an "I don't know" answer and y_l the answer to forget."""
    margin = (logp_win - ref_win) - (logp_lose - ref_lose)
    return (-F.logsigmoid(beta * margin)).mean()


def token_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(π_ref ‖ π_θ) of the next-token distributions at each position (the last dimension is
    the vocabulary)."""
    logq = torch.log_softmax(logits.float(), dim=-1)
    logp_ref = torch.log_softmax(ref_logits.float(), dim=-1)
    return (logp_ref.exp() * (logp_ref - logq)).sum(-1)


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(π_ref ‖ π_θ) of the next-token distributions, averaged over the answer tokens of each
    sequence (``labels != -100``; never prompt or padding), then over sequences. This is the
    retain term of grad_diff/NPO in its KL form (TOFU, Maini et al. 2024, §4: "KL minimization")."""
    rows, cols = (labels != -100).nonzero(as_tuple=True)
    return sequence_mean(token_kl(logits[rows, cols], ref_logits[rows, cols]), rows, labels.shape[0])


def sequence_mean(values: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """The mean over ``batch`` sequences of each sequence's mean of ``values`` (one per answer
    token, ``rows`` its sequence); a sequence without answer tokens counts as 0."""
    sums = torch.zeros(batch, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    counts = torch.bincount(rows, minlength=batch).clamp(min=1)
    return (sums / counts).mean()


def rmu_forget(hidden: torch.Tensor, control: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMU's forget term (Li et al. 2024, "The WMDP Benchmark", eq. 1): mean squared distance
    between the layer's activations on forget tokens and c·u (``control``, a fixed random unit
    vector u scaled by the steering coefficient c), averaged over the hidden dimension and the
    masked tokens."""
    per_token = ((hidden.float() - control.float()) ** 2).mean(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def rmu_retain(hidden: torch.Tensor, frozen: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMU's retain term (Li et al. 2024, eq. 2): mean squared distance between the updated and
    the frozen model's activations on retain tokens (the paper's α weighs it in the caller)."""
    per_token = ((hidden.float() - frozen.float()) ** 2).mean(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)
