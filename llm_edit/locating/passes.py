"""Restored runs of causal tracing, batched into passes (what makes a trace take seconds on a CPU).

A run restoring token t at layer l equals the corrupted run before t (causality) and below l,
so runs are grouped by where they start (the corrupted prefix comes from a key/value cache) and
by their lowest restored layer (the blocks below it replay the corrupted run's outputs,
``hooks.replay_blocks``). ``trace`` (in ``trace.py``) plans the passes and reads the
probabilities back.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from ..core.arch import arch_of
from ..core.head import head_of
from ..core.hooks import Trace, replay_blocks

# How restored runs are grouped into passes: layers are bucketed into this many floors, tokens
# into runs of this many consecutive positions. Fewer, larger passes multiply bigger matrices;
# more, smaller ones skip more work. Measured in evals/bench_locate.py.
FLOOR_BUCKETS = 6
TOKEN_BUCKET = 3


def tensor_of(output):
    return output[0] if isinstance(output, tuple) else output


def _with_tensor(output, tensor):
    return (tensor,) + tuple(output[1:]) if isinstance(output, tuple) else tensor


def restore_modules(spec, kind: str, layer: int, n_layers: int, window: int) -> list[str]:
    if kind == "hidden":
        return [spec.layer(layer)]
    low, high = max(0, layer - window // 2), min(n_layers, layer - (-window // 2))
    path = spec.mlp_out if kind == "mlp" else spec.attn_out
    return [path.format(j) for j in range(low, high)]


def _layer_of(spec, module_name: str) -> int:
    return int(module_name[len(spec.layers) + 1:].split(".")[0])


@dataclass
class SubjectNoise:
    """``edit_output`` that adds the noise draws to the subject tokens' embeddings, for a pass of
    ``n_runs`` restored runs per draw (rows sample-major) over the positions ``start``.. ."""

    draws: torch.Tensor  # (samples, subject tokens, d_model)
    embed: str
    first: int
    last: int
    n_runs: int = 1
    start: int = 0

    def __call__(self, output, name: str):
        hidden = tensor_of(output)
        lo, hi = max(self.first, self.start), min(self.last + 1, self.start + hidden.shape[1])
        if name != self.embed or lo >= hi:
            return output
        hidden = hidden.clone()
        noise = self.draws[:, lo - self.first:hi - self.first].repeat_interleave(self.n_runs, 0)
        hidden[:, lo - self.start:hi - self.start] += noise.to(hidden.dtype)
        return _with_tensor(output, hidden)


class _Job(NamedTuple):
    """One restored run: a state (kind, token, layer) and the modules set back to clean."""

    kind: str
    token: int
    layer: int
    modules: list[str]


class _Pass(NamedTuple):
    """Restored runs sent through the model together: they share the first token run (the
    corrupted prefix before ``start`` comes from a cache) and the blocks below ``floor``
    (replayed from the corrupted run)."""

    start: int
    floor: int
    jobs: list[_Job]


@dataclass
class _Restore:
    """``edit_output`` of one pass: the subject's noise, and each job's clean states put back."""

    noise: SubjectNoise
    clean: dict[str, torch.Tensor]  # module -> its clean output over the whole prompt
    jobs: list[_Job]

    def __post_init__(self):
        self.where: dict[str, list[tuple[int, int]]] = {}  # module -> (job, token) pairs
        for j, job in enumerate(self.jobs):
            for m in job.modules:
                self.where.setdefault(m, []).append((j, job.token))

    def __call__(self, output, name: str):
        if name == self.noise.embed:
            return self.noise(output, name)
        if name not in self.where:
            return output
        hidden = tensor_of(output).clone()
        n, start = self.noise.n_runs, self.noise.start
        for j, t in self.where[name]:  # rows of job j: j, j + n, j + 2n, ... (sample-major)
            hidden[j::n, t - start] = self.clean[name][t].to(hidden.dtype)
        return _with_tensor(output, hidden)


def plan_passes(spec, kinds: list[str], tokens: list[int], n_layers: int, window: int, *, reuse_prefix: bool,
                 runs_per_pass: int) -> list[_Pass]:
    """Group the restored runs into passes. A run restoring token t at layer l equals the
    corrupted run before t (causality) and below l: with ``reuse_prefix`` it feeds only tokens
    t.. on top of the corrupted prefix's KV cache (tokens bucketed by ``TOKEN_BUCKET``), and the
    blocks below its lowest restored layer (rounded down to a multiple of ``step``, so that
    passes stay large) replay the corrupted outputs."""
    step = max(1, math.ceil(n_layers / FLOOR_BUCKETS))
    groups: dict[tuple[int, int], list[_Job]] = {}
    for kind in kinds:
        for k, t in enumerate(tokens):
            start = tokens[k - k % TOKEN_BUCKET] if reuse_prefix else 0
            for l in range(n_layers):
                modules = restore_modules(spec, kind, l, n_layers, window)
                floor = min(_layer_of(spec, m) for m in modules)
                groups.setdefault((start, floor - floor % step), []).append(_Job(kind, t, l, modules))
    return [_Pass(start, floor, jobs[i:i + runs_per_pass]) for (start, floor), jobs in sorted(groups.items())
            for i in range(0, len(jobs), runs_per_pass)]


def last_probs(lm_head, final: torch.Tensor) -> torch.Tensor:
    return torch.softmax(lm_head(final[:, -1]).float(), dim=-1)


def restored_probs(model, input_ids: torch.Tensor, passes: list[_Pass], clean: dict[str, torch.Tensor],
                   corrupted_blocks: list, corrupt: SubjectNoise, target_id: int, *,
                   progress: bool = False) -> dict[tuple[str, int, int], float]:
    """p_restored for every job of ``passes``: the target's probability averaged over the noise
    draws, keyed by (kind, token, layer)."""
    spec = arch_of(model)
    samples = corrupt.draws.shape[0]
    lm_head, _ = head_of(model)  # with Gemma 2's soft-capping
    blocks = [spec.layer(i) for i in range(len(corrupted_blocks))]
    prefix_caches: dict[int, object] = {}
    restored: dict[tuple[str, int, int], float] = {}
    for start, floor, jobs in tqdm(passes, desc="causal trace", unit="pass", disable=not progress, leave=False):
        n_runs = len(jobs)
        cache = None
        if start > 0:
            if start not in prefix_caches:
                prefix_caches[start] = _prefix_cache(model, input_ids[:, :start].expand(samples, -1), spec, corrupt)
            cache = copy.deepcopy(prefix_caches[start])
            cache.batch_repeat_interleave(n_runs)
        restore = _Restore(replace(corrupt, n_runs=n_runs, start=start), clean, jobs)
        replayed = [_with_tensor(o, tensor_of(o)[:, start:].repeat_interleave(n_runs, 0))
                    for o in corrupted_blocks[:floor]]
        names = [spec.embed] + sorted(restore.where) + [spec.final_norm]
        with replay_blocks([model.get_submodule(b) for b in blocks[:floor]], replayed):
            with Trace(model, names, edit_output=restore, retain_output=True, stop=True) as tr:
                model(input_ids=input_ids[:, start:].expand(n_runs * samples, -1), use_cache=cache is not None,
                      **_cache_kwarg(model, cache))
        p = last_probs(lm_head, tr[spec.final_norm].output)[:, target_id].view(samples, n_runs).mean(0)
        for j, job in enumerate(jobs):
            restored[job.kind, job.token, job.layer] = p[j].item()

    return restored


def _prefix_cache(model, ids, spec, noise_edit):
    """The corrupted run's key/value cache over the tokens before a restored position."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with Trace(model, [spec.embed, spec.final_norm], edit_output=noise_edit, stop=True):
        model(input_ids=ids, use_cache=True, **_cache_kwarg(model, cache))
    return cache


def _cache_kwarg(model, cache) -> dict:
    """transformers renamed ``past_key_values`` to ``cache`` (5.x); pass whichever it takes."""
    import inspect

    if cache is None:
        return {}
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}
