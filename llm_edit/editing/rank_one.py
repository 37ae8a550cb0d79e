"""The solves shared by every locate-then-edit method (ROME's rank-one update, MEMIT's batch
update, AlphaEdit's null-space update): pure functions on tensors.

No model, no hooks, no orchestration here, so that ROME, MEMIT and AlphaEdit call the same
code and it cannot drift between them. Their value objectives are in ``objectives``.
"""
from __future__ import annotations

import torch


def rank_one_update(residual: torch.Tensor, key: torch.Tensor, cov: torch.Tensor | None,
                    preserved: torch.Tensor | None = None, preserve_weight: float = 0.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """ROME's closed-form rank-one update (Meng et al. 2022, eq. 2), as factors ``left @ right``.

    Minimises ||W' K - V|| subject to W' k* = v*, with K Kᵀ estimated by the key second moment
    C = E[k kᵀ]:  W' = W + Λ (C⁻¹ k*)ᵀ,  Λ = (v* - W k*) / ((C⁻¹ k*)ᵀ k*).

    ``residual`` is v* - W k* (d_out,), ``key`` is k* (d_in,), ``cov`` is C (d_in, d_in) or
    None for the identity (ROME without the second-moment adjustment). Solved in float64.
    Deviation from the original code: k* here is the prefix-averaged key in both the
    numerator and the denominator (the r-ROME fix, Gupta et al. 2024); the original mixes it
    with the bare-prompt key, which makes sequential edits collapse.
    ``preserved`` (m, d_in): keys of facts that are not edited but must keep their outputs. Each
    enters the old keys' second moment with weight w = ``preserve_weight``: C is replaced by
    C + w K_pᵀK_p (an addition of ours, as ``batch_update``'s μ). C is an average over text, so
    one key in it weighs nothing; with w the update writes at a preserved key k_p only about
    1/(1 + w k_pᵀC⁻¹k_p) of what it wrote before (Sherman-Morrison), and k_pᵀC⁻¹k_p is about
    d_in for a typical key. The constraint W' k* = v* still holds exactly.
    Returns ``left`` (d_out, 1) and ``right`` (1, d_in) in float32, with W' = W + left @ right.
    """
    u, denom = _solved_key(key, cov, preserved, preserve_weight)
    left = (residual.double() / denom).unsqueeze(1)
    return left.float(), u.unsqueeze(0).float()


def _solved_key(key, cov, preserved, preserve_weight) -> tuple[torch.Tensor, torch.Tensor]:
    """(C'⁻¹k*, (C'⁻¹k*)ᵀk*) in float64, C' = C + w K_pᵀK_p (``rank_one_update``)."""
    k = key.double()
    c = None if cov is None else cov.double()
    if preserved is not None and len(preserved) and preserve_weight > 0:
        p = preserved.double().to(k.device)
        c = (torch.eye(k.shape[0], dtype=torch.float64, device=k.device) if c is None else c) \
            + preserve_weight * (p.T @ p)
    u = k if c is None else torch.linalg.solve(c, k)
    denom = u @ k
    if not torch.isfinite(denom) or denom.abs() < 1e-12:
        raise FloatingPointError("rank-one update: (C⁻¹k)ᵀk is zero or not finite")
    return u, denom


def write_direction(key: torch.Tensor, cov: torch.Tensor | None, preserved: torch.Tensor | None = None,
                    preserve_weight: float = 0.0) -> torch.Tensor:
    """d = C'⁻¹k* / (C'⁻¹k*)ᵀk* (d_in,), float32: ``rank_one_update``'s update writes
    residual · (dᵀk) at any key k, so dᵀk is the share of what it writes at k* that a key k
    receives (1 at k* itself). ROME's value optimisation gives every prompt the whole δ at
    its subject; with ``key_shares`` each prompt gets its key's share instead (``rome.py``)."""
    u, denom = _solved_key(key, cov, preserved, preserve_weight)
    return (u / denom).float()


def batch_update(residuals: torch.Tensor, keys: torch.Tensor, cov: torch.Tensor | None, weight: float,
                 preserved: torch.Tensor | None = None, preserve_weight: float = 0.0,
                 also_preserved: tuple[tuple[torch.Tensor, float], ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """MEMIT's batch update of one layer (Meng et al. 2023, "Mass-Editing Memory in a
    Transformer", eq. 14), as factors ``left @ right`` of rank n.

    Minimises Σ_old ||W' k − W k||² + Σ_i ||W' k_i − v_i||², with the old keys' K₀K₀ᵀ estimated
    by λ·C (C = E[k kᵀ], λ = ``weight``, MEMIT's ``mom2_update_weight``):
    ΔW = R Kᵀ (λC + K Kᵀ)⁻¹, where K = [k_1 … k_n] and R = [r_1 … r_n] the residuals
    (v_i − W k_i, MEMIT spreads them over its layers before calling this).

    ``preserved`` (m, d_in): keys of facts that are not edited but must keep their outputs, each
    entering the first sum with weight μ = ``preserve_weight`` instead of through C:
    ΔW = R Kᵀ (λC + μ K_p K_pᵀ + K Kᵀ)⁻¹. C is an average over text, so a few facts close to the
    edited ones (another landmark of the same city) weigh almost nothing in it; μ makes them count
    like μ copies each. This is MEMIT's own objective with those keys named (an addition: the
    paper preserves only through C). ``also_preserved``: more (keys, weight) groups, each adding
    weight·K_gᵀK_g the same way (MEMIT's ``known_key_weight``).

    ``residuals`` (n, d_out), ``keys`` (n, d_in), ``cov`` (d_in, d_in) or None for the identity.
    Solved in float64; returns ``left`` (d_out, n) and ``right`` (n, d_in) in float32.
    """
    right = _batch_right(keys, cov, weight, preserved, preserve_weight, also_preserved)
    return residuals.double().T.float(), right.float()


def _batch_right(keys: torch.Tensor, cov: torch.Tensor | None, weight: float,
                 preserved: torch.Tensor | None = None, preserve_weight: float = 0.0,
                 also_preserved: tuple[tuple[torch.Tensor, float], ...] = ()) -> torch.Tensor:
    """K (λC + μK_pᵀK_p + KᵀK)⁻¹, (n, d_in), float64: ``batch_update``'s right factor."""
    k = keys.double()
    c = torch.eye(k.shape[1], dtype=torch.float64, device=k.device) if cov is None else cov.double()
    system = weight * c + k.T @ k
    for group, group_weight in ((preserved, preserve_weight), *also_preserved):
        if group is not None and len(group) and group_weight > 0:
            p = group.double().to(k.device)
            system = system + group_weight * (p.T @ p)
    right = torch.linalg.solve(system, k.T).T  # (n, d_in): rows of K (λC + μK_pᵀK_p + KᵀK)⁻¹, symmetric
    if not torch.isfinite(right).all():
        raise FloatingPointError("MEMIT update: the key system is singular or not finite")
    return right


def leak_fractions(keys: torch.Tensor, others: torch.Tensor, cov: torch.Tensor | None, weight: float
                   ) -> torch.Tensor:
    """How much of each edit MEMIT's update (``batch_update``, no preserved keys) also writes at
    keys it was not asked to change: (n, m), entry (i, j) = a_ij / a_ii with a = K (λC + KᵀK)⁻¹
    [K; K_o]ᵀ. The update writes ΔW k = Σ_i r_i a_i(k), so a key k_j of another fact receives
    a_ij / a_ii of what request i's own key receives, residual r_i for residual r_i.

    A fact whose key lies close to an edited one in C⁻¹'s metric (another person of the same
    religion, another landmark of the same city) gets a large share; an erasure's value
    optimisation can use it to choose a δ that does no harm where it leaks (``values``,
    ``leak_kl``). ``keys`` (n, d_in), ``others`` (m, d_in); float32."""
    right = _batch_right(keys, cov, weight)
    own = (right * keys.double()).sum(1)
    if not torch.isfinite(own).all() or (own.abs() < 1e-12).any():
        raise FloatingPointError("leak fractions: an edited key receives none of its own update")
    return (right @ others.double().to(right.device).T / own[:, None]).float()


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


def energy_threshold(cov: torch.Tensor, share: float) -> float:
    """The eigenvalue cutoff below which C's eigen-directions together hold at most ``share`` of
    its trace, E‖k‖² (an addition of ours, ``nullspace_scale: energy``): the projector of
    ``null_space_projector(cov, energy_threshold(cov, share))`` lets preserved keys keep at least
    1 − share of their energy out of every update, on any layer and model. An absolute threshold
    does not carry over: on Gemma 3 270M the layers' traces differ thirty-fold, and 0.08 puts
    1,952 of layer 4's 2,048 directions, 40% of its keys' energy, in the "null" space."""
    values = torch.linalg.eigvalsh(cov.double())  # ascending
    n = int((torch.cumsum(values, 0) <= share * values.sum()).sum())  # the smallest n hold at most the share
    return float(values[n]) if n < len(values) else float("inf")


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


