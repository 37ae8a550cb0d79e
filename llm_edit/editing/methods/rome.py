"""ROME: rank-one model editing (Meng et al., "Locating and Editing Factual Associations in
GPT", NeurIPS 2022), with the r-ROME consistency fix (Gupta et al. 2024).

For each request, one after another: the key k* is the edited MLP output projection's input at
the subject's last token, averaged over short model-generated prefixes (eq. 3); the value
change δ is optimised so that the model says the new object (eq. 4); the closed-form rank-one
update (eq. 2) then writes v_init + δ at k* while disturbing other keys as little as C = E[kkᵀ]
allows; with ``protect_neighbours`` the keys of the known facts next to the request weigh in C
too (an addition of ours, ``rank_one.rank_one_update``). The value optimisation adds δ at the
subject's last token of every prompt; the update writes δ·(dᵀk) there (``rank_one.write_direction``),
k that prompt's own key, which is not k* in a chat turn or after a prefix: with ``key_shares`` each
prompt receives that share while δ is optimised (an addition of ours). The maths lives in
``keys.py``, ``values.py`` and ``rank_one.py``, shared with the other locate-then-edit methods.

``layer: auto`` takes the layer from causal tracing (``locating.average.auto_layers``: the peak of the
average MLP indirect effect at the subject's last token, cached per model).

``rome-erase`` (``ROMEEraseConfig``) is the same rank-one edit with another target value: for
each fact to forget, δ either makes the true object unlikely (``erase_objective: suppress``,
``objectives.object_unlikelihood``, with the same KL and norm constraints as ROME) or makes the
model say a neutral ``neutral_target`` instead (``neutral``: ROME toward that target). The
result is a patch like any edit's: auditable, revertible, stackable.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ...core.arch import arch_of, num_layers
from ...core.config import ConfigError
from ..contract import Memory, Prepared
from ..keys import context_templates, mean_subject_key, mean_subject_keys
from ..rank_one import rank_one_update, write_direction
from ..stats import second_moment
from ..values import ValueOptions, check_value_options, optimise_with
from .erase import EraseOptions, lead_in_record, value_objective


@dataclass
class ROMEConfig(ValueOptions):
    """ROME hyper-parameters; defaults follow the paper's GPT-J recipe, recipes tune them per model."""

    layer: int | str = "auto"  # the block whose MLP output projection is edited, or "auto" (causal tracing)
    v_steps: int = 20  # Adam steps for δ
    v_lr: float = 0.5
    clamp_norm_factor: float = 4.0  # ||δ|| ≤ factor · ||v_init||
    # this many shipped known facts per request that share its old object or relation (the
    # training half, ``core.known``) are kept where they are: ``edit`` passes them as preserved
    # facts when it is given none, and their keys enter C with weight ``preserve_weight``
    # (``rank_one.rank_one_update``); 0: off
    protect_neighbours: int = 0
    preserve_weight: float = 0.01  # w per preserved key against C's 1 (C + w K_pᵀK_p)
    # each prompt of the value optimisation receives the share of δ the update will write at its
    # own key (``rank_one.write_direction``) instead of δ whole: a chat turn's key is not k*
    key_shares: bool = False

    def validate(self) -> None:
        if isinstance(self.layer, str) and self.layer != "auto":
            raise ValueError(f"layer must be a block index or 'auto', got {self.layer!r}")
        if isinstance(self.layer, int) and self.layer < 0:
            raise ValueError("layer must be >= 0")
        if self.protect_neighbours < 0 or self.preserve_weight < 0:
            raise ValueError("protect_neighbours >= 0 and preserve_weight >= 0 are required")
        check_value_options(self)


@dataclass
class ROMEEraseConfig(EraseOptions, ROMEConfig):
    """rome-erase: ROME's hyper-parameters plus what the new value should do (``erase.py``)."""

    def validate(self) -> None:
        ROMEConfig.validate(self)
        self.validate_erase()


def prepare(model, tok, config: ROMEConfig) -> Prepared:
    """Work shared by all requests: the layer, C for its MLP output and the context prefixes."""
    located = None
    layer = config.layer
    if layer == "auto":
        from ...locating.average import auto_layers

        (layer,), located = auto_layers(model, tok, 1)
    if layer >= num_layers(model):
        raise ConfigError(f"layer {layer} does not exist: the model has {num_layers(model)} layers "
                          f"(0..{num_layers(model) - 1})")
    name = arch_of(model).mlp_out.format(layer)
    cov, stats_manifest = second_moment(model, tok, name, corpus=config.stats_corpus,
                                        n_tokens=config.stats_tokens, seq_len=config.stats_seq_len,
                                        seed=config.seed)
    contexts = context_templates(model, tok, config.context_lengths, config.contexts_per_length, config.seed)
    return Prepared(layer=layer, modules=[name], contexts=contexts, statistics=stats_manifest, located=located,
                    covariances={layer: cov})


def compute(model, tok, requests, config: ROMEConfig, prepared: Prepared, memory: Memory):
    """Factors of the rank-one update for one request, in the weight's storage layout."""
    (request,) = requests
    spec = arch_of(model)
    (name,) = prepared.modules
    t0 = time.perf_counter()
    objective = value_objective(config, [request], tok, model)
    forms = (objective.get("forms") or [None])[0]
    key = mean_subject_key(model, tok, name, request, prepared.contexts, config.bare_key_weight, forms,
                           config.form_key_weight)
    cov = prepared.covariances[prepared.layer]
    cov = cov.to(key.device) if cov is not None else None
    preserved = None
    wanted = memory.preserved_for([request]) if config.preserve_weight > 0 else []
    if wanted:
        # the keys are this module's inputs, which no ROME edit of it moves: measured once a call
        known = memory.preserved_keys.setdefault(name, {})
        missing = [i for i in wanted if i not in known]
        if missing:
            keys = mean_subject_keys(model, tok, name, [memory.preserve[i] for i in missing], prepared.contexts,
                                     config.bare_key_weight)
            known.update(zip(missing, keys))
        preserved = torch.stack([known[i] for i in wanted])
    t1 = time.perf_counter()
    if config.key_shares:
        objective["write_directions"] = [write_direction(key, cov, preserved, config.preserve_weight)]
    (value,) = optimise_with(config, model, tok, name, [request], prepared.contexts, **objective)
    t2 = time.perf_counter()
    left, right = rank_one_update(value.delta, key, cov, preserved, config.preserve_weight)
    t3 = time.perf_counter()
    if spec.mlp_out_transposed:  # Conv1D stores (in, out): (left @ right)ᵀ = rightᵀ @ leftᵀ
        left, right = right.T, left.T
    info = {"objective": objective["objective"], "loss_before": value.nll_before,
            "loss_after_optimisation": value.nll_after, "steps": value.steps,
            "delta_norm": float(value.delta.norm()), "value_norm": float(value.initial.norm()),
            "key_seconds": round(t1 - t0, 3), "value_seconds": round(t2 - t1, 3), "solve_seconds": round(t3 - t2, 3),
            **lead_in_record(objective, 0)}
    return {name + ".weight": (left, right)}, [info]
