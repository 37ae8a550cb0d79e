"""The registry of editing methods: the one place a method is added.

A method is a small unit: a typed config dataclass (its recipe keys) and three functions,
``prepare(model, tok, config) -> Prepared`` (work shared by all requests, done before any edit:
layers, key statistics, context prefixes), ``compute(model, tok, requests, config, prepared,
memory) -> (factors, infos)`` (the weight change for one batch of requests, not yet applied,
and one info dict per request), and ``batch_size(config)``. The contract types are in
``llm_edit.editing.contract``. Orchestration (applying, rolling back on failure, manifests)
lives in ``llm_edit.editing.edit`` and is the same for every method.

A method that must remember earlier batches (AlphaEdit) reads ``memory.grams`` (module name →
Σ K Kᵀ of the keys of every earlier batch, float64) and stages its batch's keys in
``memory.staged`` (module name → (n, d_in)); the orchestration adds them to the memory only once
the batch's patch is applied, and ``llm_edit.editing.session`` carries the memory across calls
and processes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ...core.registry import Registry
from . import alphaedit, memit, rome


@dataclass(frozen=True)
class Method:
    name: str
    config: type
    prepare: Callable
    compute: Callable
    batch_size: Callable
    summary: str
    erases: bool = False  # a forget method: requests carry the object to erase (target_true)
    preserves: bool = False  # compute honours ``memory.preserve`` (facts whose keys must not move)


METHODS: Registry[Method] = Registry("editing method", {
    "rome": Method("rome", rome.ROMEConfig, rome.prepare, rome.compute, lambda config: 1,
                   "rank-one edit of one MLP layer per fact, applied one fact after another", preserves=True),
    "rome-erase": Method("rome-erase", rome.ROMEEraseConfig, rome.prepare, rome.compute, lambda config: 1,
                         "erase facts by rank-one edits: make each object unlikely (or neutral), one fact "
                         "after another", erases=True, preserves=True),
    "memit": Method("memit", memit.MEMITConfig, memit.prepare, memit.compute, lambda config: config.batch_size,
                    "batch edit spread over a range of MLP layers (batch_size requests at once)", preserves=True),
    "memit-erase": Method("memit-erase", memit.MEMITEraseConfig, memit.prepare, memit.compute,
                          lambda config: config.batch_size,
                          "erase facts by MEMIT batch edits: make each object unlikely (or neutral)", erases=True,
                          preserves=True),
    "alphaedit": Method("alphaedit", alphaedit.AlphaEditConfig, alphaedit.prepare, alphaedit.compute,
                        lambda config: config.batch_size,
                        "MEMIT's batch edit projected onto the null space of preserved knowledge, remembering "
                        "earlier batches' keys: for long sequences of edits"),
    "alphaedit-erase": Method("alphaedit-erase", alphaedit.AlphaEditEraseConfig, alphaedit.prepare, alphaedit.compute,
                              lambda config: config.batch_size,
                              "erase facts by AlphaEdit batch edits: each batch in the null space of preserved "
                              "knowledge and off the keys of the batches erased before it", erases=True,
                              preserves=True),
})

ERASERS = METHODS.subset("erasure method", lambda m: m.erases)


def get_method(name: str) -> Method:
    return METHODS.lookup(name)
