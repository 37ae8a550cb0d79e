"""Values for locate-then-edit methods (ROME, MEMIT and AlphaEdit share these; keys are in ``keys``).

A *value* is an MLP output projection's output at the subject's last token. ``optimise_values``
finds, for each request of a batch, the change δ of that output that makes the model say the
new object (ROME §3.1, eq. 4). It takes a module name, so it serves any edited module.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from ..core.arch import arch_of
from ..core.head import head_of
from ..core.hooks import Trace
from ..core.text import pad_id
from .objectives import clamp_norm, kl_to_initial, mean_target_nll, object_unlikelihood, relative_weight_decay
from .requests import EditRequest
from .value_rows import (_cache_bytes_per_token, _CacheBudget, _groups_within, _PromptChunk, _Row, _value_rows,
                         lane_capacity)


@contextlib.contextmanager
def frozen(model: torch.nn.Module):
    """Turn off weight gradients for the duration (backward then computes activations' only)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@dataclass
class ValueOptions:
    """The keys every locate-then-edit config shares (ROME, MEMIT, AlphaEdit and their erasers):
    how values are optimised (ROME eq. 4: weight decay, KL on the essence prompts, the early stop,
    the context prefixes, the bare prompt's share of the key) and which key statistics are used.
    Each method's config adds its own keys and its defaults for ``v_steps``, ``v_lr`` and
    ``clamp_norm_factor``, which differ between the papers."""

    v_weight_decay: float = 0.5  # weight of ||δ||²/||v_init||²
    kl_factor: float = 0.0625  # weight of KL on the essence prompts
    kl_prompts: list[str] = field(default_factory=lambda: ["{} is a"])
    nll_stop: float = 0.05  # stop optimising once the target NLL (per token) is below this
    context_lengths: list[int] = field(default_factory=lambda: [5, 10])  # generated prefix lengths
    contexts_per_length: int = 5
    bare_key_weight: float | None = None  # weight of the unprefixed prompt's key in k*; None: equal
    # forms: the value is also optimised over the other forms each fact is asked in (core.forms:
    # chat turns, subject first; erasures also MQuAKE's questions, which judge insertions)
    expand: str = "none"
    # with expand: forms, insertions are also asked as a question, in llm-edit's own per-relation
    # wording (core.forms, data/training_questions.json): MQuAKE's questions judge edits, so an
    # insertion never trains on them; erasures always train on MQuAKE's (the audit judges them)
    own_questions: bool = False
    # with expand: forms, the share of k* taken by the keys of those forms (keys.mean_subject_keys):
    # 0 writes the update at the prompt's keys only, as ROME and MEMIT do
    form_key_weight: float = 0.0
    # insertions: how many new tokens of the model's own greedy answer to the fact's prompt, each
    # derived form and llm-edit's own question for the relation are read (0: off). Where the answer
    # names the old object after a short lead-in ("The developer of {} is"), that form continued by
    # the lead-in is one more prompt after which the new object must be said (``lead_in_forms``);
    # erasures have their own, ``erase_lead_in_tokens``
    insert_lead_in_tokens: int = 0
    # insertions: rounds of editing; after a round, the facts whose greedy answer to their prompt or
    # a derived training form does not yet say the new object (or still says the old one) are
    # edited again, on the model as now edited (``erase.unheld``); 1: one round. Erasures have
    # their own, ``erase_rounds``. AlphaEdit's memory then holds the first round's keys of the
    # facts edited again, so its later rounds write less at them (they count as edits to keep)
    insert_rounds: int = 1
    stats_corpus: str = "model-samples"  # see editing/stats.py
    stats_tokens: int = 50_000
    stats_seq_len: int = 128
    seed: int = 0


def check_value_options(config) -> None:
    """Validate the key/value hyper-parameters every locate-then-edit config shares (ROME, MEMIT
    and their erasers): raises ``ValueError`` naming the key."""
    if config.v_steps < 0 or config.v_lr <= 0 or config.clamp_norm_factor <= 0:
        raise ValueError("v_steps >= 0, v_lr > 0 and clamp_norm_factor > 0 are required")
    if config.bare_key_weight is not None and not 0 <= config.bare_key_weight <= 1:
        raise ValueError("bare_key_weight must be between 0 and 1 (or null)")
    if config.expand not in ("none", "forms"):
        raise ValueError(f"expand must be 'none' or 'forms', got {config.expand!r}")
    if config.own_questions and config.expand != "forms":
        raise ValueError("own_questions asks the fact as a question among its forms: it needs expand: forms")
    if not 0 <= config.form_key_weight <= 1:
        raise ValueError("form_key_weight must be between 0 and 1")
    if config.form_key_weight > 0 and config.expand != "forms":
        raise ValueError("form_key_weight mixes the keys of the derived forms into k*: it needs expand: forms")
    if config.insert_lead_in_tokens < 0:
        raise ValueError("insert_lead_in_tokens must be >= 0")
    if config.insert_rounds < 1:
        raise ValueError("insert_rounds must be >= 1")
    for p in config.kl_prompts:
        if p.count("{}") != 1:
            raise ValueError(f"kl_prompts: {p!r} must contain '{{}}' exactly once")
    if not config.context_lengths or any(n < 1 for n in config.context_lengths) or config.contexts_per_length < 0:
        raise ValueError("context_lengths must be a non-empty list of lengths >= 1 and contexts_per_length >= 0")
    check_stats_options(config.stats_corpus, config.stats_tokens, config.stats_seq_len)


def check_stats_options(corpus: str, n_tokens: int, seq_len: int) -> None:
    """The key statistics' settings, checked before the model loads (not an hour into sampling)."""
    if n_tokens < 1 or seq_len < 2:
        raise ValueError("stats_tokens >= 1 and stats_seq_len >= 2 are required")
    if corpus in ("shipped", "model-samples", "identity") or corpus.startswith("hf:"):
        return
    if not corpus.startswith("file:"):
        raise ValueError(f"unknown stats_corpus {corpus!r}: use shipped, model-samples, file:PATH, hf:NAME[:CONFIG] "
                         "or identity")
    if not Path(corpus[5:]).is_file():
        raise ValueError(f"stats_corpus {corpus!r}: no such file")


@dataclass
class ValueResult:
    delta: torch.Tensor  # δ = v* − v_init, the change of the module's output (d_out,)
    initial: torch.Tensor  # v_init, averaged over the same prompts as the key
    nll_before: float
    nll_after: float
    steps: int


def optimise_with(config, model, tok, module_name: str, requests: list[EditRequest], contexts: list[str],
                  **options) -> list[ValueResult]:
    """``optimise_values`` with a locate-then-edit config's value keys (``ValueOptions`` and the
    method's ``v_steps``, ``v_lr``, ``clamp_norm_factor``); ``options`` adds the rest."""
    return optimise_values(model, tok, module_name, requests, contexts, steps=config.v_steps, lr=config.v_lr,
                           kl_factor=config.kl_factor, weight_decay=config.v_weight_decay,
                           clamp_norm_factor=config.clamp_norm_factor, kl_prompts=config.kl_prompts,
                           nll_stop=config.nll_stop, **options)


def optimise_values(model, tok, module_name: str, requests: list[EditRequest], contexts: list[str], *,
                    steps: int, lr: float, kl_factor: float, weight_decay: float,
                    clamp_norm_factor: float, kl_prompts: list[str], nll_stop: float,
                    targets: list[str] | None = None, objective: str = "insert", stop_prob: float = 0.0,
                    forms: list[list] | None = None, leaks: list[list] | None = None, leak_kl: float = 0.0,
                    write_directions: list[torch.Tensor] | None = None, max_rows: int = 96,
                    prefix_cache_bytes: int = 2**30, progress: bool = False) -> list[ValueResult]:
    """For each request, find δ added to ``module_name``'s output at the last subject token
    (ROME eq. 4; MEMIT eq. 16 optimises the same at its top layer).

    Loss per request = objective over its context-prefixed prompts (and ``forms[i]``, the other
    forms request i is asked in, ``core.forms``: a mean over all of them) + kl_factor · KL on its
    essence prompts + weight_decay · ||δ||²/||v_init||²; Adam; after each step ||δ|| is clamped
    to clamp_norm_factor · ||v_init||. With ``leaks[i]``, (fact, share) pairs: facts that request i's
    weight update will also move, by that share of δ_i (``rank_one.leak_fractions``), the loss gains
    leak_kl · (mean over them of the KL of that fact's next token when the share of δ is added at
    its subject): δ_i is chosen among the values that also do no harm where they leak. With
    ``write_directions[i]`` (d_in,: ``rank_one.write_direction``, ROME's ``key_shares``) each of request
    i's prompts receives δ_i scaled by dᵀk, k its own key at the subject (the module's input there),
    which is what the rank-one update will write there, instead of δ_i whole. The objective:

    * ``insert`` (ROME): the mean per-token NLL of the target (default ``target_new``); a
      request stops once it is below ``nll_stop``;
    * ``suppress`` (erasure): ``objectives.object_unlikelihood`` of the target (default
      ``target_true``); a request stops once the object's probability is below ``stop_prob``
      after every prompt (the largest, not the mean: the object must go after each context).

    Batched across requests: δ_i only touches request i's prompts, so the summed loss gives
    each δ_i exactly the gradient it gets alone, and every δ_i has its own Adam state (one
    parameter each); a request that has stopped leaves the batch (its δ is frozen, as Adam
    skips parameters without a gradient). Every term of the loss is a mean over one request's
    prompts, so the prompts of all requests are pooled, sorted by length and sent in chunks of
    at most ``max_rows`` prompts, gradients accumulating; within a chunk the prompts are packed
    into lanes of up to 512 tokens, each prompt masked to its own tokens (``value_rows``), so a
    step runs little padding. Each prompt's
    tokens before the subject's last token do not depend on δ: they run once, without
    gradients, and their key/value cache is kept, so a step runs only the tokens from the
    subject on. A group's caches may take ``prefix_cache_bytes`` (1 GiB); requests go in
    groups whose *estimated* caches fit ``1 / _ESTIMATE_SHARE`` of it (256 MiB: about 60
    CounterFact facts on the 30-layer default model), one group after another: memory is that of
    one group however many requests there are (a cache past the room is rebuilt each step
    instead of kept).
    ``ValueResult.nll_before/after`` hold the objective's value before and after.
    """
    if objective not in ("insert", "suppress"):
        raise ValueError(f"unknown objective {objective!r}")
    if targets is None:
        targets = [r.target_new if objective == "insert" else r.target_true for r in requests]
    for r, t in zip(requests, targets):
        if not t:
            raise ValueError(f"no target for the {objective!r} objective of {r.text!r}")
    # Requests are optimised in groups whose prefixes' caches fit the room: requests never
    # interact (each δ_i has its own rows and Adam state), so a group gives each of its requests
    # what the whole batch would, while memory stays that of one group however large the batch
    # (a batch of 1,000 would otherwise rebuild most prefixes every step or hold gigabytes of
    # cache). Groups are formed on an estimate of the padded caches that can fall short of them,
    # hence the share.
    forms = forms or [[] for _ in requests]
    leaks = leaks if leaks and leak_kl > 0 else [[] for _ in requests]
    rows_of = [_value_rows(tok, r, t, contexts, kl_prompts, f, leak, objective)
               for r, t, f, leak in zip(requests, targets, forms, leaks)]
    groups = _groups_within(rows_of, _cache_bytes_per_token(model), prefix_cache_bytes // _ESTIMATE_SHARE)
    results: list[ValueResult] = []
    for group in tqdm(groups, desc=f"value groups of {len(requests)} requests", unit="group",
                      disable=not progress or len(groups) == 1, leave=False):
        rows = [row._replace(request=k) for k, i in enumerate(group) for row in rows_of[i]]
        optimisation = _GroupOptimisation(model, tok, module_name, rows, len(group), n_ctx=len(contexts),
                                          n_ess=len(kl_prompts), objective=objective, max_rows=max_rows,
                                          prefix_cache_bytes=prefix_cache_bytes, progress=progress,
                                          directions=None if write_directions is None
                                          else [write_directions[i] for i in group])
        results += optimisation.run(steps=steps, lr=lr, kl_factor=kl_factor, leak_kl=leak_kl, weight_decay=weight_decay,
                                    clamp_norm_factor=clamp_norm_factor, nll_stop=nll_stop, stop_prob=stop_prob)
    return results


# Groups of requests are formed so that their estimated prefix caches (``_groups_within``: twice
# the unpadded prefix tokens) fit a quarter of the room the caches may take. The padded caches
# can exceed the estimate: chunks are sorted by what follows the prefix, and an erasure's chat
# forms (SmolLM2's system prompt: 50-odd tokens) share chunks with 10-token context prefixes; a
# batch of 8 erasures estimated under 256 MiB needed 310 MB. With the room equal to the
# estimate's budget, as until 2026-12-06, the chunk that did not fit was rebuilt every step:
# the 8 erasures' value optimisation took 158.6 s instead of 104.2 s, with the same result bit for
# bit (README, "Prefix caches that fit"). The groups, and so every result, are those of the
# 256 MiB budget.
_ESTIMATE_SHARE = 4


class _Pass(NamedTuple):
    """One chunk's forward pass at the current δ: per row, its share of the loss and (rewrite
    rows) the log-probability of the whole target; None where a row has no such term."""

    rows: list[_Row]
    terms: list[torch.Tensor | None]
    target_logprobs: list[torch.Tensor | None]


class _GroupOptimisation:
    """The value optimisation of ``n`` requests whose prompts are ``rows`` (request indices
    0..n-1): the fixed chunks, each request's δ and v_init, and the essence prompts' states at
    δ = 0. ``run`` measures at δ = 0, then steps Adam until every request stops or ``steps``."""

    def __init__(self, model, tok, module_name: str, rows: list[_Row], n: int, *, n_ctx: int, n_ess: int,
                 objective: str, max_rows: int, prefix_cache_bytes: int, progress: bool,
                 directions: list[torch.Tensor] | None = None):
        from ..core.scoring import forward_options

        self.model, self.module_name, self.n, self.n_ctx, self.n_ess = model, module_name, n, n_ctx, n_ess
        self.objective, self.progress = objective, progress
        self.device = next(model.parameters()).device
        # with directions, the first pass (δ = 0) reads each own row's key and sets its share of δ
        self.directions = None if directions is None else [d.to(self.device) for d in directions]
        spec = arch_of(model)
        self.final_norm = spec.final_norm
        self.lm_head, _ = head_of(model)  # the output layer and any soft-capping (Gemma 2)
        _, self.cache_arg = forward_options(model)
        # Each loss term is a mean over one request's rows, so rows can be batched in any grouping.
        # A row is split at the subject's last token, where δ enters: the part before it never
        # changes (``_PromptChunk``). Sorting by the changing part keeps its padding small.
        self.chunks = _layout(rows, pad_id(tok), self.device, max_rows, lane_capacity(model),
                              next(model.parameters()).dtype)
        self.cache_room = _CacheBudget(prefix_cache_bytes)
        # each rewrite row's term is divided by its request's number of rewrite rows (n_ctx
        # without derived forms), so the objective is a mean over that request's prompts
        self.n_rewrite, self.n_leak = [0] * n, [0] * n
        for row in rows:
            if row.essence < 0:
                self.n_rewrite[row.request] += 1
            elif row.essence >= n_ess:
                self.n_leak[row.request] += 1
        self.deltas: list[torch.Tensor | None] = [None] * n  # None until measured at δ = 0
        self.initial_sum: dict[int, torch.Tensor] = {}  # Σ of v over each request's rewrite rows, at δ = 0
        # Essence rows at δ = 0, kept as final-norm states (d floats), not as next-token log-probs
        # (vocabulary-sized: 0.2 GB for a batch of 1,000 on a 49k vocabulary); the initial
        # distribution is recomputed from them, in the same batched head call, whenever needed.
        self.essence_init: dict[tuple[int, int], torch.Tensor] = {}

    def run(self, *, steps: int, lr: float, kl_factor: float, leak_kl: float, weight_decay: float,
            clamp_norm_factor: float, nll_stop: float, stop_prob: float) -> list[ValueResult]:
        n = self.n
        before, after = [0.0] * n, [0.0] * n
        taken, done = [0] * n, [False] * n
        with frozen(self.model):
            values, _ = self.measure(set(range(n)), f"measuring {n} values")  # at δ = 0: v_init, essence rows
            self.directions = None  # the rows' shares are set
            initial = [self.initial_sum[i] / self.n_ctx for i in range(n)]
            for i in range(n):
                before[i] = values[i]
                self.deltas[i] = torch.zeros_like(initial[i], requires_grad=True)
            opt = torch.optim.Adam(self.deltas, lr=lr)
            max_norms = [clamp_norm_factor * v.norm() for v in initial]
            bar = tqdm(total=steps, desc=f"optimising {n} values", unit="step", disable=not self.progress,
                       leave=False)
            for _ in range(steps):
                active = {i for i in range(n) if not done[i]}
                bar.set_postfix(active=len(active))
                if not active:
                    break
                opt.zero_grad(set_to_none=True)
                values, probs = self._backward_losses(active, kl_factor, leak_kl)
                stepped = []
                for i in sorted(active):
                    if (values[i] < nll_stop) if self.objective == "insert" else (probs[i] < stop_prob):
                        # stopped at this δ: drop the gradient its rows left, so Adam leaves it as it is
                        done[i], after[i], self.deltas[i].grad = True, values[i], None
                    else:
                        stepped.append(i)
                if stepped:
                    torch.stack([relative_weight_decay(self.deltas[i], initial[i]) for i in stepped]).sum().mul(
                        weight_decay).backward()
                opt.step()
                with torch.no_grad():
                    for i in stepped:
                        taken[i] += 1
                        clamp_norm(self.deltas[i], float(max_norms[i]))
                bar.update(1)
            bar.close()
            unfinished = {i for i in range(n) if not done[i]}
            if unfinished:
                values, _ = self.measure(unfinished, f"scoring {len(unfinished)} unfinished values")
                for i in unfinished:
                    after[i] = values[i]
        return [ValueResult(self.deltas[i].detach(), initial[i], before[i], after[i], taken[i]) for i in range(n)]

    def measure(self, active: set[int], desc: str) -> tuple[dict[int, float], dict[int, float]]:
        """The objective of each active request at the current δ, and its largest target
        probability over its prompts (no gradient)."""
        values, probs = {i: 0.0 for i in active}, {i: 0.0 for i in active}
        with torch.no_grad():
            # minutes for a batch of a thousand: a bar over its chunks
            for chunk_pass in tqdm(self._passes(active), total=len(self.chunks), desc=desc, unit="chunk",
                                   disable=not self.progress, leave=False):
                _tally(chunk_pass, values, probs)
        return values, probs

    def _backward_losses(self, active: set[int], kl_factor: float, leak_kl: float
                         ) -> tuple[dict[int, float], dict[int, float]]:
        """Accumulate the gradient of every active request's loss, chunk by chunk; returns what
        ``measure`` returns, at the δ before this step."""
        values, probs = {i: 0.0 for i in active}, {i: 0.0 for i in active}
        for chunk_pass in self._passes(active):
            _tally(chunk_pass, values, probs)
            weights = [1.0 if row.essence < 0 else kl_factor if row.essence < self.n_ess else leak_kl
                       for row in chunk_pass.rows]
            loss = torch.stack([term * w for w, term in zip(weights, chunk_pass.terms)]).sum()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"value optimisation diverged (loss={loss.item()})")
            loss.backward()
        return values, probs

    def _passes(self, active: set[int]):
        for chunk in self.chunks:
            chunk_pass = self._forward(chunk, active)
            if chunk_pass is not None:
                yield chunk_pass

    def _forward(self, chunk: _PromptChunk, active: set[int]) -> _Pass | None:
        """The chunk's rows of active requests at the current δ; None when none is active. Each
        rewrite row's term is its share of its request's objective (divided by its rewrite rows), each
        essence row's its share of the KL (divided by n_ess)."""
        keep = [b for b, row in enumerate(chunk.rows) if row.request in active]
        if not keep:
            return None
        lanes = sorted({chunk.lane[b] for b in keep})
        select = None if len(lanes) == chunk.n_lanes else torch.tensor(lanes, device=self.device)
        renumber = {lane: i for i, lane in enumerate(lanes)}
        rows = [chunk.rows[b] for b in keep]
        # where each kept row's rest begins in this pass (lane, position); a lane's other rows,
        # of stopped requests, run without δ and without a term
        at = torch.tensor([[renumber[chunk.lane[b]], chunk.start[b]] for b in keep], device=self.device)
        past = chunk.prefix_cache(self.model, select, self.cache_room)
        suffix_ids, mask, positions = chunk.inputs(select)
        # Stop after the final norm and apply the LM head only where a loss is taken: the
        # full-vocabulary head over every position would cost more than the layers above δ.
        with Trace(self.model, [self.module_name, self.final_norm], edit_output=partial(self._add_delta, rows, at),
                   retain_input=self.directions is not None, retain_output=True, detach=False, stop=True) as tr:
            self.model(input_ids=suffix_ids, attention_mask=mask, position_ids=positions,
                       use_cache=past is not None, **({self.cache_arg: past} if past is not None else {}))
        if self.directions is not None:  # δ = 0, every row active: each own row's key is the input at its subject
            keys = tr[self.module_name].input[at[:, 0], at[:, 1]].detach().float()
            for k, (b, row) in enumerate(zip(keep, rows)):
                if row.essence < self.n_ess:
                    chunk.rows[b] = row._replace(scale=float(self.directions[row.request] @ keys[k]))
        terms, target_logprobs = self._terms(rows, at, tr[self.final_norm].output)
        return _Pass(rows, terms, target_logprobs)

    def _add_delta(self, rows: list[_Row], at: torch.Tensor, output, name: str):
        """The edited module's output with each row's δ added at the subject's last token (the
        first position of its rest, ``at``); at δ = 0 (first pass) it records v_init."""
        if name != self.module_name:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        if self.deltas[rows[0].request] is None:
            at_subject = hidden[at[:, 0], at[:, 1]].detach().float()
            for b, row in enumerate(rows):
                if row.essence < 0 and row.keyed:
                    self.initial_sum[row.request] = self.initial_sum.get(row.request, 0) + at_subject[b]
            return output
        hidden = hidden.clone()
        # own rows take δ itself, not δ × 1.0: the extra multiply changes autograd's summation order
        # and with it the edit's last bits (measured), and edits without leak rows must stay as they were
        shifts = [self.deltas[r.request] * r.scale if r.scale != 1.0 else self.deltas[r.request] for r in rows]
        hidden[at[:, 0], at[:, 1]] += torch.stack(shifts).to(hidden.dtype)
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    def _terms(self, rows: list[_Row], at: torch.Tensor, final: torch.Tensor):
        """Per row its term (a rewrite row's share of the objective, an essence or leak row's
        share of the KL) and, for rewrite rows, the target's summed log-probability. One head
        call serves them all: on CPU the head's weight (vocabulary × d) is read once per call,
        which costs more than the few rows it is applied to."""
        # rewrite rows: target token j is predicted after the prompt's last token, at len(ids) - 1 + j
        t_rows, t_pos, t_ids = [], [], []
        for b, row in enumerate(rows):
            for j, token in enumerate(row.target):
                t_rows.append(b)
                t_pos.append(len(row.ids) - 1 - row.split + j)
                t_ids.append(token)
        # essence prompts are read at the subject's last token, as ROME's code does; a leak row
        # after the prompt, where the other fact's object is said
        ess = [b for b, row in enumerate(rows) if row.essence >= 0]
        e_pos = [0 if rows[b].essence < self.n_ess else len(rows[b].ids) - 1 - rows[b].split for b in ess]
        b_of = torch.tensor(t_rows + ess, dtype=torch.long, device=self.device)
        offset = torch.tensor(t_pos + e_pos, dtype=torch.long, device=self.device)
        states = final[at[b_of, 0], at[b_of, 1] + offset] if len(b_of) else final.new_zeros((0, final.shape[-1]))
        keys = [(rows[b].request, rows[b].essence) for b in ess]
        for key, state in zip(keys, states[len(t_rows):]):
            self.essence_init.setdefault(key, state.detach())
        inits = [self.essence_init[k] for k in keys]
        logp = torch.log_softmax(self.lm_head(torch.cat([states, *([torch.stack(inits)] if inits else [])])).float(),
                                 dim=-1)
        terms, target_logprobs = [None] * len(rows), [None] * len(rows)
        if t_rows:
            n = len(t_rows)
            picked = logp[:n].gather(-1, torch.tensor(t_ids, device=self.device)[:, None]).squeeze(-1)
            t_rows_t = b_of[:n]
            sums = torch.zeros(len(rows), dtype=picked.dtype, device=self.device).index_add(0, t_rows_t, picked)
            n_tok = torch.bincount(t_rows_t, minlength=len(rows))
            for b in sorted(set(t_rows)):
                target_logprobs[b] = sums[b]
                terms[b] = (object_unlikelihood(sums[b:b + 1]) if self.objective == "suppress"
                            else mean_target_nll(sums[b:b + 1], n_tok[b:b + 1])) / self.n_rewrite[rows[b].request]
        ess_logp, init_logp = logp[len(t_rows):len(t_rows) + len(ess)], logp[len(t_rows) + len(ess):].detach()
        for b, own, init in zip(ess, ess_logp, init_logp):
            terms[b] = kl_to_initial(own[None], init[None]) / (self.n_ess if rows[b].essence < self.n_ess
                                                                else self.n_leak[rows[b].request])
        return terms, target_logprobs


def _layout(rows: list[_Row], pad: int, device, max_rows: int, capacity: int | None,
            dtype: torch.dtype) -> list[_PromptChunk]:
    """The chunks a group's rows are sent in: rows of their own sorted by the part that changes
    (so that rows of one length share a chunk), or, where the model allows it (``capacity``),
    each request's rows packed into lanes, whichever runs fewer token slots a step. Packing wins
    where a request's rows differ in length (ROME's forms: a chat turn's 10 tokens from the
    subject on against a prompt's 3; 44 slots instead of 90 a step); without forms a request's
    rows are about as long as each other, lanes of different requests are not, and rows of their
    own sorted by length pad as little or less (MEMIT's first 100 CounterFact records: 1,488 slots
    a step either way in its two large groups; ties keep rows of their own)."""
    def by_length(row):
        return len(row.ids) + len(row.target) - row.split, row.split

    own = sorted(rows, key=by_length)
    chunks = [_PromptChunk(own[k:k + max_rows], pad, device) for k in range(0, len(own), max_rows)]
    if capacity is None:
        return chunks
    grouped = sorted(rows, key=lambda row: (row.request, *by_length(row)))
    packed = [_PromptChunk(grouped[k:k + max_rows], pad, device, capacity, dtype)
              for k in range(0, len(grouped), max_rows)]
    return packed if sum(c.rest_ids.numel() for c in packed) < sum(c.rest_ids.numel() for c in chunks) else chunks


def _tally(chunk_pass: _Pass, values: dict[int, float], probs: dict[int, float]) -> None:
    """Add a pass's rewrite rows to their requests' objective and largest target probability."""
    for row, term, logprob in zip(chunk_pass.rows, chunk_pass.terms, chunk_pass.target_logprobs):
        if row.essence < 0:
            values[row.request] += term.item()
            probs[row.request] = max(probs[row.request], logprob.exp().item())
