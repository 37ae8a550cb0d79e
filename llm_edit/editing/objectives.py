"""The value-optimisation objectives of locate-then-edit methods (ROME eq. 4 and its erasure
variants): pure functions on tensors, shared by ROME, MEMIT and AlphaEdit through ``values``.
"""
from __future__ import annotations

import torch


def mean_target_nll(log_probs_sum: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """ROME eq. 4, first term: −(1/N) Σ_j log P(o* | x_j ⊕ p), each prompt's log-probability
    divided by its number of target tokens (as in the reference code), averaged over prompts."""
    return -(log_probs_sum / n_tokens.clamp(min=1)).mean()


def object_unlikelihood(log_probs_sum: torch.Tensor) -> torch.Tensor:
    """−(1/N) Σ_j log(1 − P(o | x_j)): the loss that erasure minimises to make the object o
    unlikely after every prompt x_j, with P(o | x) = exp(Σ_tokens log p), the whole object's
    probability.

    Unlikelihood training (Welleck et al. 2020, "Neural Text Generation with Unlikelihood
    Training", eq. 4) penalises −log(1 − p(c | x)) for a single negative token c; here c is the
    whole object (all its tokens), which is what must stop being said. Bounded below by 0 and
    flat once P is small, so unlike gradient ascent on the NLL it does not push without end.
    log(1 − e^a) is computed as log(−expm1(a)) for stability."""
    a = log_probs_sum.clamp(max=-1e-6)
    return -torch.log(-torch.expm1(a)).mean()


def kl_to_initial(log_probs: torch.Tensor, initial_log_probs: torch.Tensor) -> torch.Tensor:
    """ROME eq. 4, second term: D_KL(P_new ‖ P_init) of the next-token distribution on the
    "essence" prompts ("{subject} is a"), averaged over prompts. It keeps what the model
    believes the subject *is* while its object changes."""
    return torch.sum(log_probs.exp() * (log_probs - initial_log_probs), dim=-1).mean()


def relative_weight_decay(delta: torch.Tensor, initial_value: torch.Tensor) -> torch.Tensor:
    """||δ||² / ||v_init||²: keeps the new value close to the old one.

    Deviation: ROME's code uses ||δ|| / ||v_init||² (not scale-free); the squared ratio is
    dimensionless, so one weight serves models of any width."""
    return delta.pow(2).sum() / initial_value.pow(2).sum()


def clamp_norm(delta: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Rescale δ in place so that ||δ|| ≤ max_norm (ROME's clamp_norm_factor × ||v_init||)."""
    norm = delta.norm()
    if norm > max_norm:
        delta.mul_(max_norm / norm)
    return delta
