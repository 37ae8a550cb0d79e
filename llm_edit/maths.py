"""The maths shared by every locate-then-edit method: pure functions on tensors.

No model, no hooks, no orchestration here, so that ROME, MEMIT and AlphaEdit call the same
code and it cannot drift between them.
"""
from __future__ import annotations

import torch


def rank_one_update(residual: torch.Tensor, key: torch.Tensor, cov: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """ROME's closed-form rank-one update (Meng et al. 2022, eq. 2), as factors ``left @ right``.

    Minimises ||W' K - V|| subject to W' k* = v*, with K Kᵀ estimated by the key second moment
    C = E[k kᵀ]:  W' = W + Λ (C⁻¹ k*)ᵀ,  Λ = (v* - W k*) / ((C⁻¹ k*)ᵀ k*).

    ``residual`` is v* - W k* (d_out,), ``key`` is k* (d_in,), ``cov`` is C (d_in, d_in) or
    None for the identity (ROME without the second-moment adjustment). Solved in float64.
    Deviation from the original code: k* here is the prefix-averaged key in both the
    numerator and the denominator (the r-ROME fix, Gupta et al. 2024); the original mixes it
    with the bare-prompt key, which makes sequential edits collapse.
    Returns ``left`` (d_out, 1) and ``right`` (1, d_in) in float32, with W' = W + left @ right.
    """
    k = key.double()
    u = k if cov is None else torch.linalg.solve(cov.double(), k)
    denom = u @ k
    if not torch.isfinite(denom) or denom.abs() < 1e-12:
        raise FloatingPointError("rank-one update: (C⁻¹k)ᵀk is zero or not finite")
    left = (residual.double() / denom).unsqueeze(1)
    return left.float(), u.unsqueeze(0).float()


def batch_update(residuals: torch.Tensor, keys: torch.Tensor, cov: torch.Tensor | None, weight: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """MEMIT's batch update of one layer (Meng et al. 2023, "Mass-Editing Memory in a
    Transformer", eq. 14), as factors ``left @ right`` of rank n.

    Minimises Σ_old ||W' k − W k||² + Σ_i ||W' k_i − v_i||², with the old keys' K₀K₀ᵀ estimated
    by λ·C (C = E[k kᵀ], λ = ``weight``, MEMIT's ``mom2_update_weight``):
    ΔW = R Kᵀ (λC + K Kᵀ)⁻¹, where K = [k_1 … k_n] and R = [r_1 … r_n] the residuals
    (v_i − W k_i, MEMIT spreads them over its layers before calling this).

    ``residuals`` (n, d_out), ``keys`` (n, d_in), ``cov`` (d_in, d_in) or None for the identity.
    Solved in float64; returns ``left`` (d_out, n) and ``right`` (n, d_in) in float32.
    """
    k = keys.double()
    c = torch.eye(k.shape[1], dtype=torch.float64, device=k.device) if cov is None else cov.double()
    right = torch.linalg.solve(weight * c + k.T @ k, k.T).T  # (n, d_in): rows of K (λC + KᵀK)⁻¹, symmetric
    if not torch.isfinite(right).all():
        raise FloatingPointError("MEMIT update: the key system is singular or not finite")
    return residuals.double().T.float(), right.float()


def null_space_projector(cov: torch.Tensor, threshold: float) -> torch.Tensor:
    """AlphaEdit's projector onto the (approximate) null space of the preserved keys (Fang et
    al., ICLR 2025, "AlphaEdit: Null-Space Constrained Knowledge Editing", §3.2, eq. 7–8).

    With K₀K₀ᵀ estimated by C = E[k kᵀ] (the same second moment ROME and MEMIT use), the
    eigenvectors U₀ of C whose eigenvalues are below ``threshold`` span the directions that
    preserved keys (almost) never take; P = U₀U₀ᵀ. Any update of the form ΔW = X P then leaves
    W k₀ unchanged for keys in C's dominant subspace: ΔW k₀ = X P k₀ ≈ 0.
    ``threshold`` is absolute, as in the reference code (``nullspace_threshold``, 2e-2 for its
    models), so it depends on the scale of the keys: the recipes say how it was chosen.
    Eigendecomposition in float64 (``eigh``: C is symmetric; the reference uses an SVD, which
    for a symmetric positive semi-definite matrix gives the same vectors). Returns P (d, d),
    float64; a threshold below every eigenvalue gives P = 0 (no edit can pass).
    """
    values, vectors = torch.linalg.eigh(cov.double())
    basis = vectors[:, values < threshold]
    return basis @ basis.T


def null_space_update(residuals: torch.Tensor, keys: torch.Tensor, projector: torch.Tensor,
                      previous_kkt: torch.Tensor | None, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """AlphaEdit's update of one layer (Fang et al. 2025, eq. 12), as factors ``left @ right``.

    ΔW = R Kᵀ P ((K_p K_pᵀ + K Kᵀ) P + α I)⁻¹ minimises ||(W + ΔW P) K − V||² +
    ||ΔW P||² α + ||ΔW P K_p||² over the projected update: the new values are written at the new
    keys K, the update lies in the null space of the preserved keys (P, ``null_space_projector``),
    and the keys of earlier edits K_p (through their accumulated Gram matrix
    ``previous_kkt`` = K_p K_pᵀ, None before the first batch) are disturbed as little as possible.
    ``residuals`` (n, d_out) are R's columns (MEMIT's spread residuals), ``keys`` (n, d_in).
    Computed as the reference code does, by solving (P (K_pK_pᵀ + KKᵀ) + αI) X = P K and taking
    ΔW = R Xᵀ (the same matrix: P and the Gram matrices are symmetric). Float64; returns
    ``left`` (d_out, n) and ``right`` (n, d_in) in float32.
    """
    k = keys.double()
    p = projector.double().to(k.device)
    gram = k.T @ k
    if previous_kkt is not None:
        gram = gram + previous_kkt.double().to(k.device)
    system = p @ gram + alpha * torch.eye(k.shape[1], dtype=torch.float64, device=k.device)
    right = torch.linalg.solve(system, p @ k.T).T  # (n, d_in)
    if not torch.isfinite(right).all():
        raise FloatingPointError("AlphaEdit update: the key system is singular or not finite")
    return residuals.double().T.float(), right.float()


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


def ngram_entropy(tokens: list[str], orders=(2, 3), weights=(2 / 3, 4 / 3)) -> float:
    """Fluency: weighted mean of n-gram entropies of a text (ROME, Meng et al. 2022, §4.2;
    weights 2/3 and 4/3 for bi- and tri-grams as in its reference code). Low values mean a
    repetitive, degenerate generation. Entropies in bits."""
    values = []
    for n, w in zip(orders, weights):
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        if not grams:
            values.append(0.0)
            continue
        counts = torch.tensor(list(_count(grams).values()), dtype=torch.float64)
        freq = counts / counts.sum()
        values.append(w * float(-(freq * freq.log2()).sum()))
    return sum(values) / len(values)


def _count(items):
    out: dict = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out
