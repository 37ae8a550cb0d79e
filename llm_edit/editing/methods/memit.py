"""MEMIT: mass-editing memory in a transformer (Meng et al., ICLR 2023), and ``memit-erase``.

A batch of requests is written into the MLP output projections of a range of layers R that
ends where causal tracing finds the facts (§4.3, Algorithm 1):

1. for each request i, the hidden state z_i that makes the model say the new object is found
   at the top layer's residual stream (block output) at the subject's last token:
   z_i = h_i + δ_i, δ_i by ``kv.optimise_with`` (eq. 16: the same loss as ROME's, all
   requests optimised together);
2. for each layer l in R from bottom to top: the keys K_l of the requests (averaged over the
   context prefixes as ROME's), the *current* top-layer hidden states H (re-measured, since
   the updates below changed them), the residual R = (Z − H)/(layers remaining), and
   ΔW_l = R K_lᵀ (λ C_l + K_l K_lᵀ)⁻¹ (eq. 14, ``rank_one.batch_update``, float64); ΔW_l is applied
   before moving up because the next layer's keys and hidden states depend on it.

The updates are handed back as one low-rank patch factor per layer (rank = batch size), so a
MEMIT batch is applied, reverted and saved like any edit; later batches see earlier ones.

Deviations: z_i, h_i and the keys are all averaged over the same context-prefixed prompts
(MEMIT's code takes h_i and z_i from the bare prompt but the keys from the prefixed ones);
``bare_key_weight`` weights the bare prompt's key as in ``rome.py``. Facts given to keep
(``memory.preserve``: an erasure's protected neighbours) add their keys, weighted
``preserve_weight``, to the old keys of eq. 14 (``rank_one.batch_update``); with ``leak_kl`` their
prompts also enter the value loss, each receiving the share of δ the update will leak to it
(``rank_one.leak_fractions``), so that δ is chosen to do no harm there (an addition of ours);
with ``leak_share`` each such prompt receives that fixed share instead, and a request's own-object
facts come first: δ must then act on its subject, not on every subject with that object.
``known_key_weight`` w > 0 adds the subject keys of the shipped known facts' training half
(``core.known``, about 600 entities) to the old keys, each weighted w: C is an average over
generic text, where a named entity's last token is rare, so an update written at one entity's key
leaks to others more than to text (another addition of ours; the keys are measured once, on the
bare prompts of the model as prepared, so above the first edited layer they are the unedited model's,
and a batch's own subjects are left out of them; ``leak_kl``'s shares do not count them).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ...core.arch import arch_of
from ...core.known import known_facts
from ..contract import Memory, Prepared
from ..keys import (check_layer_range, context_templates, mean_subject_keys, resolve_layers, spread_over_layers,
                    subject_keys)
from ..rank_one import batch_update, leak_fractions
from ..stats import second_moment
from ..values import ValueOptions, check_value_options, optimise_with
from .erase import EraseOptions, lead_in_record, value_objective


@dataclass
class MEMITConfig(ValueOptions):
    """MEMIT hyper-parameters; defaults follow the paper's GPT-J recipe, recipes tune them per model."""

    layers: list[int] | str = "auto"  # the edited blocks, bottom to top, or "auto" (causal tracing)
    auto_layer_count: int = 3  # with layers: auto, this many layers ending at the traced peak
    mom2_update_weight: float = 15000.0  # λ: weight of the old keys' C against the new keys
    batch_size: int = 100  # requests per batch; batches are applied one after another
    v_steps: int = 25
    v_lr: float = 0.5
    clamp_norm_factor: float = 0.75  # ||δ|| ≤ factor · ||h|| (MEMIT: 0.75; δ sits in the residual stream)
    # μ: weight of each preserved fact's key (edit(preserve=...), an erasure's protect_neighbours)
    # against one edited key's 1 and the old keys' λC (rank_one.batch_update)
    preserve_weight: float = 10.0
    # weight of the KL on preserved facts' prompts with the share of δ the update leaks to them
    # (``leak_fractions``): each value is chosen to do no harm where it leaks; 0: off
    leak_kl: float = 0.0
    leak_facts: int = 3  # with leak_kl: the preserved facts per request it leaks to most whose prompts enter
    # with leak_kl: 0 gives each leak row the share the update leaks to it; s > 0 gives every one s
    # of δ, and a request's leak facts are the preserved ones that share its object first (an
    # erasure's value must then suppress the object for its subject and not for another subject
    # with that object: a δ aimed at the subject rather than at the object's word)
    leak_share: float = 0.0
    # this many shipped known facts per request that share its old object or relation (the training
    # half, ``core.known``) are preserved: ``edit`` chooses them when given no ``preserve``; 0: off
    protect_neighbours: int = 0
    # w: weight of each of the training half's known facts' subject keys among the old keys
    # (λC + w Σ k kᵀ), so that an update leaks less to entities C rarely sees; 0: off
    known_key_weight: float = 0.0

    def validate(self) -> None:
        check_layer_range(self)
        if self.mom2_update_weight <= 0:
            raise ValueError("mom2_update_weight > 0 is required")
        if (self.preserve_weight < 0 or self.leak_kl < 0 or self.leak_facts < 1 or self.protect_neighbours < 0
                or self.known_key_weight < 0):
            raise ValueError("preserve_weight >= 0, leak_kl >= 0, leak_facts >= 1, protect_neighbours >= 0 and "
                             "known_key_weight >= 0 are required")
        if not 0 <= self.leak_share <= 1:
            raise ValueError("leak_share must be between 0 and 1 (0: the share the update leaks)")
        if self.leak_share > 0 and self.leak_kl == 0:
            raise ValueError("leak_share sets the share of δ in leak_kl's rows: it needs leak_kl > 0")
        check_value_options(self)


@dataclass
class MEMITEraseConfig(EraseOptions, MEMITConfig):
    """memit-erase: MEMIT's hyper-parameters plus what the new values should do (``erase.py``)."""

    def validate(self) -> None:
        MEMITConfig.validate(self)
        self.validate_erase()


def prepare(model, tok, config: MEMITConfig) -> Prepared:
    """The layers, C for each of their MLP output projections, and the context prefixes."""
    layers, located = resolve_layers(model, tok, config)
    spec = arch_of(model)
    covs, stats = {}, []
    for layer in layers:
        covs[layer], manifest = second_moment(model, tok, spec.mlp_out.format(layer), corpus=config.stats_corpus,
                                              n_tokens=config.stats_tokens, seq_len=config.stats_seq_len,
                                              seed=config.seed)
        stats.append(manifest)
    contexts = context_templates(model, tok, config.context_lengths, config.contexts_per_length, config.seed)
    known_subjects, known_keys = [], {}
    if config.known_key_weight > 0:
        known = known_facts("train")
        known_subjects = [k["subject"] for k in known]
        for layer in layers:
            known_keys[layer] = subject_keys(model, tok, spec.mlp_out.format(layer),
                                             [k["prompt"].replace(k["subject"], "{}", 1) for k in known],
                                             known_subjects)
    return Prepared(layer=list(layers), modules=[spec.mlp_out.format(layer) for layer in layers], contexts=contexts,
                    statistics=stats, located=located, covariances=covs, known_subjects=known_subjects,
                    known_keys=known_keys)


def compute(model, tok, requests, config: MEMITConfig, prepared: Prepared, memory: Memory):
    """Factors of the batch's update of every layer in the range, in each weight's layout."""
    spec = arch_of(model)
    layers, contexts = prepared.layers, prepared.contexts
    top = spec.layer(layers[-1])
    t0 = time.perf_counter()
    objective = value_objective(config, requests, tok, model)
    keep = [memory.preserve[i] for i in memory.preserved_for(requests)]  # this batch's neighbours, or all given
    leaks = _leaks(model, tok, requests, keep, prepared, config) if config.leak_kl > 0 else None
    values = optimise_with(config, model, tok, top, requests, contexts, progress=len(requests) > 1, leaks=leaks,
                           leak_kl=config.leak_kl, **objective)
    targets = torch.stack([v.initial + v.delta for v in values])
    t1 = time.perf_counter()

    own = {r.subject.lower() for r in requests}
    known_rows = [i for i, subject in enumerate(prepared.known_subjects) if subject.lower() not in own]

    def solve(layer, residuals, keys):
        cov = prepared.covariances[layer]
        preserved = None
        if keep and config.preserve_weight > 0:  # measured now: the layers below are already updated
            preserved = mean_subject_keys(model, tok, spec.mlp_out.format(layer), keep, contexts,
                                          config.bare_key_weight)
        known = ((prepared.known_keys[layer][known_rows].to(keys.device), config.known_key_weight),
                 ) if known_rows else ()
        return batch_update(residuals, keys, cov.to(keys.device) if cov is not None else None,
                            config.mom2_update_weight, preserved, config.preserve_weight, known)

    factors, _ = spread_over_layers(model, tok, requests, contexts, layers, targets, config.bare_key_weight, solve,
                                    forms=objective.get("forms"), form_weight=config.form_key_weight)
    t2 = time.perf_counter()
    info = [{"objective": objective["objective"], "loss_before": v.nll_before,
             "loss_after_optimisation": v.nll_after, "steps": v.steps, "delta_norm": float(v.delta.norm()),
             "value_seconds_batch": round(t1 - t0, 3), "solve_seconds_batch": round(t2 - t1, 3),
             **({"leak_shares": [[other.subject, round(share, 4)] for other, share in leaks[i]]} if leaks else {}),
             **lead_in_record(objective, i)}
            for i, v in enumerate(values)]
    return factors, info


def _leaks(model, tok, requests, preserve, prepared: Prepared, config: MEMITConfig):
    """For each request, the preserved facts its edit will move most (``rank_one.leak_fractions``,
    averaged over the edited layers, keys of the model as it is before the batch) with their
    shares: ``leak_facts`` of them per request (a forget set's protected facts all come with every
    batch, most of them close to other batches' facts). None without preserved facts."""
    if not preserve:
        return None
    spec = arch_of(model)
    shares = 0
    for layer in prepared.layers:
        name = spec.mlp_out.format(layer)
        keys = mean_subject_keys(model, tok, name, requests, prepared.contexts, config.bare_key_weight)
        others = mean_subject_keys(model, tok, name, preserve, prepared.contexts, config.bare_key_weight)
        cov = prepared.covariances[layer]
        shares = shares + leak_fractions(keys, others, cov.to(keys.device) if cov is not None else None,
                                         config.mom2_update_weight)
    shares = shares / len(prepared.layers)
    per = min(len(preserve), config.leak_facts)
    if config.leak_share > 0:
        size = shares.abs().tolist()

        def chosen(i):
            obj = requests[i].target_true
            # a fact with no object given shares none (None == None is not a shared object)
            return sorted(range(len(preserve)), key=lambda j: (not (obj and preserve[j].target_true == obj),
                                                               -size[i][j]))[:per]
        return [[(preserve[j], config.leak_share) for j in chosen(i)] for i in range(len(requests))]
    return [[(preserve[j], float(shares[i, j])) for j in shares[i].abs().topk(per).indices.tolist()]
            for i in range(len(requests))]
