"""AlphaEdit: null-space constrained knowledge editing (Fang et al., ICLR 2025).

MEMIT's batch edit (``memit.py``: the same target values z_i at the top layer, the same keys,
the same residual spread over the layer range, bottom to top) with another solve: each layer's
update is projected onto the null space of the preserved knowledge's keys, so that what the
model knew stays put, and it accounts for the keys of earlier batches, so that sequential
edits stop overwriting each other (``rank_one.null_space_projector``, ``rank_one.null_space_update``):

    ΔW_l = R K_lᵀ P_l ((K_p K_pᵀ + K_l K_lᵀ) P_l + α I)⁻¹

P_l comes from C_l = E[k kᵀ], the statistics ROME and MEMIT use (eigenvalues below
``nullspace_threshold``, in C's units as in the reference code; with ``nullspace_scale:
mean_eigenvalue`` as a multiple of C's mean eigenvalue, or with ``energy`` as the share of
trace(C) the null space may hold, which carry over between layers and models whose keys differ
in scale). K_p K_pᵀ is the session memory (``llm_edit.editing.session``): the Gram
matrix of every earlier batch's keys at that layer, handed in by the orchestration as
``memory.grams``. This method never stores it: it stages the batch's keys in ``memory.staged``
and the orchestration adds them once the batch's patch is applied, so a failed batch leaves the
memory as it was.

``alphaedit-erase`` (``AlphaEditEraseConfig``) is the same projected update with an erasure's
values (``erase.py``: the object made unlikely, or a neutral target said): a forget set goes in
batches, one after another, and each batch's update is projected into the null space of generic
text's keys and kept off the keys of the batches erased before it. With ``protect_neighbours`` the protected known
facts' keys join the earlier batches' in the solve's Gram term, each weighted
``preserve_weight`` (an addition of ours, as MEMIT's μ).

Deviations from the reference code: the solve runs in float64 (the reference: float32 on the
GPU); the keys kept for the memory are the ones measured in the layer loop, which already see
every lower layer's update, the same values as the reference's re-measurement after the loop
(a layer's keys do not depend on its own or higher layers' MLP outputs).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ...core.arch import arch_of
from ...core.config import ConfigError
from ..contract import Memory, Prepared
from ..keys import check_layer_range, context_templates, mean_subject_keys, resolve_layers, spread_over_layers
from ..rank_one import energy_threshold, null_space_projector, null_space_update
from ..stats import second_moment
from ..values import ValueOptions, check_value_options, optimise_with
from .erase import EraseOptions, lead_in_record, value_objective


NULLSPACE_SCALES = ("absolute", "mean_eigenvalue", "energy")


def null_space_cutoff(cov: torch.Tensor, threshold: float, scale: str) -> float:
    """``nullspace_threshold`` read on ``nullspace_scale``, as an eigenvalue of C."""
    if scale == "mean_eigenvalue":  # scale-free: the same setting on any model
        return threshold * (float(cov.double().trace()) / cov.shape[0])
    if scale == "energy":
        return energy_threshold(cov, threshold)
    return threshold


@dataclass
class AlphaEditConfig(ValueOptions):
    """AlphaEdit hyper-parameters; defaults follow the reference Llama3-8B recipe, recipes tune
    them per model."""

    layers: list[int] | str = "auto"  # the edited blocks, bottom to top, or "auto" (causal tracing)
    auto_layer_count: int = 3  # with layers: auto, this many layers ending at the traced peak
    nullspace_threshold: float = 0.02  # eigenvalues of C below this span the null space
    # how nullspace_threshold reads: in C's units (absolute, the reference), × trace(C)/d
    # (mean_eigenvalue), or the share of trace(C) the null space may hold (energy, rank_one.energy_threshold)
    nullspace_scale: str = "absolute"
    alpha: float = 10.0  # α: ridge term of the solve (the reference's ``L2``)
    batch_size: int = 100  # requests per batch; batches are applied one after another
    v_steps: int = 25
    v_lr: float = 0.1
    clamp_norm_factor: float = 0.75  # ||δ|| ≤ factor · ||h|| (δ sits in the residual stream)

    def validate(self) -> None:
        check_layer_range(self)
        if self.nullspace_scale not in NULLSPACE_SCALES:
            raise ValueError(f"nullspace_scale must be one of {', '.join(NULLSPACE_SCALES)}, got {self.nullspace_scale!r}")
        if self.nullspace_threshold <= 0 or self.alpha <= 0:
            raise ValueError("nullspace_threshold > 0 and alpha > 0 are required")
        if self.nullspace_scale == "energy" and self.nullspace_threshold >= 1:
            raise ValueError("with nullspace_scale energy, nullspace_threshold is a share of trace(C): below 1")
        check_value_options(self)


@dataclass
class AlphaEditEraseConfig(EraseOptions, AlphaEditConfig):
    """alphaedit-erase: AlphaEdit's hyper-parameters plus what the new values should do (``erase.py``)."""

    # each protected fact's key enters the solve's K_pK_pᵀ with this weight (an earlier edit's: 1)
    preserve_weight: float = 1.0

    def validate(self) -> None:
        AlphaEditConfig.validate(self)
        self.validate_erase()
        if self.preserve_weight < 0:
            raise ValueError("preserve_weight must be >= 0")


def prepare(model, tok, config: AlphaEditConfig) -> Prepared:
    """The layers, the null-space projector of each layer's preserved keys, the context prefixes."""
    layers, located = resolve_layers(model, tok, config)
    spec = arch_of(model)
    projectors, stats = {}, []
    for layer in layers:
        cov, manifest = second_moment(model, tok, spec.mlp_out.format(layer), corpus=config.stats_corpus,
                                      n_tokens=config.stats_tokens, seq_len=config.stats_seq_len, seed=config.seed)
        if cov is None:
            raise ConfigError("alphaedit needs key statistics: stats_corpus 'identity' has no null space")
        threshold = null_space_cutoff(cov, config.nullspace_threshold, config.nullspace_scale)
        projectors[layer] = null_space_projector(cov, threshold)
        rank = int(round(float(projectors[layer].trace())))
        stats.append(dict(manifest, null_space_dim=rank, key_dim=cov.shape[0], null_space_threshold=threshold))
        if rank == 0:
            raise ConfigError(f"layer {layer}: no eigenvalue of C is below the null-space threshold "
                              f"{threshold:.3g}: the null space is empty and no edit can pass "
                              "(raise nullspace_threshold)")
    contexts = context_templates(model, tok, config.context_lengths, config.contexts_per_length, config.seed)
    return Prepared(layer=list(layers), modules=[spec.mlp_out.format(layer) for layer in layers], contexts=contexts,
                    statistics=stats, located=located, projectors=projectors)


def compute(model, tok, requests, config: AlphaEditConfig, prepared: Prepared, memory: Memory):
    """Factors of the batch's projected update of every layer in the range; stages the batch's
    keys for the session memory (``memory.staged``)."""
    spec = arch_of(model)
    layers, contexts = prepared.layers, prepared.contexts
    top = spec.layer(layers[-1])
    t0 = time.perf_counter()
    objective = value_objective(config, requests, tok, model)
    values = optimise_with(config, model, tok, top, requests, contexts, progress=len(requests) > 1, **objective)
    targets = torch.stack([v.initial + v.delta for v in values])
    t1 = time.perf_counter()
    weight = getattr(config, "preserve_weight", 0.0)
    keep = [memory.preserve[i] for i in memory.preserved_for(requests)] if weight > 0 else []

    def solve(layer, residuals, keys):
        name = spec.mlp_out.format(layer)
        gram = memory.grams.get(name)
        if keep:  # measured now: the layers below are already updated
            kept = mean_subject_keys(model, tok, name, keep, contexts, config.bare_key_weight).double().cpu()
            gram = weight * (kept.T @ kept) + (0 if gram is None else gram.double())
        return null_space_update(residuals, keys, prepared.projectors[layer], gram, config.alpha)

    factors, batch_keys = spread_over_layers(model, tok, requests, contexts, layers, targets,
                                             config.bare_key_weight, solve, forms=objective.get("forms"),
                                             form_weight=config.form_key_weight)
    memory.staged = batch_keys
    t2 = time.perf_counter()
    info = [{"objective": objective["objective"], "loss_before": v.nll_before, "loss_after_optimisation": v.nll_after,
             "steps": v.steps, "delta_norm": float(v.delta.norm()),
             "value_seconds_batch": round(t1 - t0, 3), "solve_seconds_batch": round(t2 - t1, 3),
             **lead_in_record(objective, i)} for i, v in enumerate(values)]
    return factors, info
