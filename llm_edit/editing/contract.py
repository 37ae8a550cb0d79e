"""The typed contract between ``edit`` and a method: what ``prepare`` hands to every ``compute``.

A method's ``prepare(model, tok, config) -> Prepared`` measures, once and before any edit, what
every batch reads: the edited layers, their key statistics, the context prefixes. In a sequence
of edits (``edit(prepared=...)``, sessions) it is reused, so the statistics stay the original
model's. ``compute(model, tok, requests, config, prepared, memory) -> (factors, infos)`` then
returns one batch's weight change, not yet applied, and one info dict per request.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .requests import EditRequest


@dataclass
class Prepared:
    """What ``prepare`` measured. ``layer`` is what manifests report: ROME's one block (an int),
    MEMIT's and AlphaEdit's range (a list); ``statistics`` likewise one manifest or one per layer."""

    layer: int | list[int]
    modules: list[str]  # the edited MLP output projections, bottom to top
    contexts: list[str]  # "{}" and the sampled prefixes keys are averaged over (ROME eq. 3)
    statistics: dict | list[dict] | None  # manifests of C (None: C = I)
    located: dict | None = None  # the causal-tracing record when the layers were chosen by it
    covariances: dict[int, torch.Tensor | None] = field(default_factory=dict)  # C per layer (ROME, MEMIT)
    projectors: dict[int, torch.Tensor] = field(default_factory=dict)  # null-space projector per layer (AlphaEdit)
    # MEMIT's known_key_weight: the training half's known facts, their subjects, and their keys per layer
    known_subjects: list[str] = field(default_factory=list)
    known_keys: dict[int, torch.Tensor] = field(default_factory=dict)
    config: dict = field(default_factory=dict)  # the settings it was made for: reuse needs the same

    @property
    def layers(self) -> list[int]:
        return [self.layer] if isinstance(self.layer, int) else list(self.layer)


@dataclass
class Memory:
    """What a batch must leave as it is, besides the key statistics C.

    ``grams``: AlphaEdit's memory of earlier batches (Fang et al. 2025, eq. 12), module → Σ KᵀK
    of their keys, float64. ``compute`` never writes it: it stages its batch's keys in
    ``staged``, and ``edit`` adds them only once that batch's patch is applied.
    ``preserve``: facts that are not edited but whose keys the update must not move (MEMIT's
    preserved-key term, ``memit.py``; ROME's, ``rome.py``): the known facts closest to the edited
    ones. ``neighbours_of``: where ``edit`` chose them per request (``protect_neighbours``), each
    request's own, as indices into ``preserve``; a list given by the caller is every request's.
    ``preserved_keys``: module → {index: key}, for a method that may measure a key once (ROME,
    whose edits never move their own module's inputs)."""

    grams: dict[str, torch.Tensor] = field(default_factory=dict)
    staged: dict[str, torch.Tensor] = field(default_factory=dict)
    preserve: list["EditRequest"] = field(default_factory=list)
    neighbours_of: dict["EditRequest", tuple[int, ...]] = field(default_factory=dict)
    preserved_keys: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)

    def preserved_for(self, requests) -> list[int]:
        """Indices into ``preserve`` of the facts that an edit of ``requests`` must keep."""
        if not self.neighbours_of:
            return list(range(len(self.preserve)))
        return sorted({i for r in requests for i in self.neighbours_of.get(r, ())})
