"""The prompts value optimisation runs, as rows, and how they are batched.

Every prompt of a request is one ``_Row``: its context-prefixed rewrite prompts (with the
target) and its essence prompts (KL only). Rows are sent in fixed chunks (``_PromptChunk``),
each split at the subject's last token, where δ enters: the prefix before it never changes, so
it runs once without gradients and its key/value cache is kept while the group's budget lasts.
Within a chunk, rows are packed several to a lane, each masked to its own tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..core.text import encode_with_subject, render, target_ids
from .requests import EditRequest


@dataclass
class _CacheBudget:
    """Bytes of prefix caches a group of value optimisations may still keep (shared by its chunks)."""

    bytes_left: int


# Rows are packed into lanes of at most this many tokens (each row's prefix and rest): a row's
# rest is a few tokens, and padded to the chunk's longest rest (a chat form's 10 against a
# prompt's 3) half of what a step ran was padding. Packed, a ROME step of the default model runs
# about 45 tokens instead of 90. Attention inside a lane costs its rest times its length, small
# next to the MLPs at this size.
LANE_TOKENS = 512


def lane_capacity(model) -> int | None:
    """Tokens a lane may hold on ``model``, or None where rows cannot share one: attention other
    than sdpa or eager (flash attention takes no custom mask). A sliding-window layer must see a
    lane whole (its cache keeps the window's last tokens, and the lane's mask stands for the
    window's), so the lane is shorter than the window."""
    from ..core.scoring import sliding_window

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return None
    window = sliding_window(model)
    return LANE_TOKENS if window is None else min(LANE_TOKENS, window - 1)


class _PromptChunk:
    """A fixed batch of value-optimisation rows, each split at the subject's last token (where
    δ enters): the prefix before it does not depend on δ, so it goes through the model without
    gradients, once, and its key/value cache is kept while the budget lasts (else rebuilt each
    step); only the rest (subject token, prompt tail, target) is run with δ, every step.

    Rows are packed into lanes (``lane_tokens``, ``lane_capacity``), a request's consecutive rows
    to a lane: a lane's prefixes lie one after another, then its rests, and a 4D mask lets each token see only its own row's earlier
    tokens, position ids counting from each row's start, so each row sees exactly its own
    tokens. Without ``lane_tokens``, or with a row longer than it, each row is a lane of its
    own: prefixes left-padded, rests right-padded after them, and the model builds its own mask.
    ``lane[b]``, ``start[b]``: where row b's rest begins in the rest batch."""

    def __init__(self, rows: list[tuple], pad: int, device, lane_tokens: int | None = None,
                 dtype: torch.dtype = torch.float32):
        self.rows, self.dtype = rows, dtype
        prefixes = [row.ids[:row.split] for row in rows]
        rests = [(row.ids + row.target[:-1])[row.split:] for row in rows]
        self.packed = lane_tokens is not None and all(len(p) + len(r) <= lane_tokens for p, r in zip(prefixes, rests))
        # a lane holds one request's rows: once that request stops, the lane leaves the passes (mixed
        # lanes ran on as long as any of their requests did: MEMIT's batch of 100, whose requests stop
        # after 16 of 25 steps on average, took 339 s of value optimisation instead of 227)
        lanes: list[list[int]] = []
        used = 0  # tokens in the last lane
        for b in range(len(rows)):
            size = len(prefixes[b]) + len(rests[b])
            if self.packed and lanes and rows[lanes[-1][0]].request == rows[b].request and used + size <= lane_tokens:
                lanes[-1].append(b)
                used += size
            else:
                lanes.append([b])
                used = size
        self.n_lanes = len(lanes)
        self.lane, self.start = [0] * len(rows), [0] * len(rows)
        for i, lane in enumerate(lanes):
            at = 0
            for b in lane:
                self.lane[b], self.start[b] = i, at
                at += len(rests[b])
        width_p = max(sum(len(prefixes[b]) for b in lane) for lane in lanes)
        width_r = max(sum(len(rests[b]) for b in lane) for lane in lanes)
        if self.packed:
            self.prefix_ids, self.prefix_mask, self.prefix_positions = _packed(lanes, prefixes, width_p, pad, 0, device)
            self.rest_ids, self.rest_mask, self.positions = _packed(lanes, rests, width_r, pad, width_p, device,
                                                                     before=prefixes)
        else:
            self.prefix_ids = torch.tensor([[pad] * (width_p - len(p)) + p for p in prefixes], device=device)
            self.prefix_mask = torch.tensor([[0] * (width_p - len(p)) + [1] * len(p) for p in prefixes], device=device)
            self.prefix_positions = (self.prefix_mask.cumsum(-1) - 1).clamp(min=0)
            self.rest_ids = torch.tensor([r + [pad] * (width_r - len(r)) for r in rests], device=device)
            rest_mask = torch.tensor([[1] * len(r) + [0] * (width_r - len(r)) for r in rests], device=device)
            self.rest_mask = rest_mask if width_p == 0 else torch.cat([self.prefix_mask, rest_mask], 1)
            self.positions = torch.tensor([len(p) for p in prefixes], device=device)[:, None] + torch.arange(
                width_r, device=device)
        self.cache = None

    def inputs(self, select):
        """Ids, attention mask (prefix and rest) and position ids of the selected lanes."""
        pick = (lambda t: t) if select is None else (lambda t: t[select])
        return pick(self.rest_ids), self._mask(pick(self.rest_mask)), pick(self.positions)

    def _mask(self, mask):
        # a packed lane's mask is boolean (True: may attend), given to the model additive in its own dtype,
        # which sdpa and eager attention both add to the scores as they are
        return mask if not self.packed else torch.zeros(mask.shape, dtype=self.dtype, device=mask.device).masked_fill(
            ~mask, torch.finfo(self.dtype).min)

    def prefix_cache(self, model, select, room: "_CacheBudget"):
        """A cache of the selected lanes' prefixes to run the rest on (a copy: running appends)."""
        import copy

        from ..core.scoring import cache_of

        if self.prefix_ids.shape[1] == 0:
            return None
        if self.cache is None:
            pick = (lambda t: t) if select is None else (lambda t: t[select])
            with torch.no_grad():
                cache = cache_of(model(input_ids=pick(self.prefix_ids), attention_mask=self._mask(pick(self.prefix_mask)),
                                       position_ids=pick(self.prefix_positions), use_cache=True))
            size = _cache_bytes(cache)
            if select is None and size is not None and size <= room.bytes_left and hasattr(cache, "batch_select_indices"):
                room.bytes_left -= size
                self.cache = cache
            else:
                return cache
        cache = copy.deepcopy(self.cache)
        if select is not None:
            cache.batch_select_indices(select)
        return cache


def _packed(lanes: list[list[int]], parts: list[list[int]], width: int, pad: int, offset: int, device,
            before: list[list[int]] | None = None):
    """Each lane's ``parts`` one after another, padded to ``width``: ids, a (lanes, 1, width,
    offset + width) boolean mask and position ids. Without ``before`` (prefixes) a token sees its
    own part's earlier tokens; with it (rests, run on the prefixes' cache of width ``offset``)
    also its row's prefix, and positions continue from it. A padding token sees only itself (a
    query that sees nothing would give NaN)."""
    ids = torch.full((len(lanes), width), pad, dtype=torch.long)
    mask = torch.zeros((len(lanes), 1, width, offset + width), dtype=torch.bool)
    positions = torch.zeros((len(lanes), width), dtype=torch.long)
    for i, lane in enumerate(lanes):
        at, seen = 0, 0  # where this row's part starts, and its prefix in the prefixes' cache
        for b in lane:
            n, own = len(parts[b]), 0 if before is None else len(before[b])
            ids[i, at:at + n] = torch.tensor(parts[b], dtype=torch.long)
            mask[i, 0, at:at + n, offset + at:offset + at + n] = torch.ones(n, n, dtype=torch.bool).tril()
            mask[i, 0, at:at + n, seen:seen + own] = True
            positions[i, at:at + n] = own + torch.arange(n)
            at, seen = at + n, seen + own
        for t in range(at, width):
            mask[i, 0, t, offset + t] = True
    return ids.to(device), mask.to(device), positions.to(device)


def _cache_bytes(cache) -> int | None:
    layers = getattr(cache, "layers", None)
    if layers is None:
        return None
    return sum(t.numel() * t.element_size() for layer in layers for t in (getattr(layer, "keys", None),
                                                                           getattr(layer, "values", None))
               if isinstance(t, torch.Tensor))


# A value-optimisation row: (request, essence slot or -1, ids, subject's last token, target ids).
class _Row(NamedTuple):
    """One prompt of one request in value optimisation."""

    request: int  # the request's index within its group
    essence: int  # -1: a rewrite prompt (prefix + prompt, then the target); e >= 0: essence prompt e (KL only)
    ids: list[int]  # the prompt's tokens
    split: int  # the subject's last token, where δ enters: the tokens before it never change
    target: list[int]  # the new object's tokens (none for essence prompts)
    keyed: bool = True  # a context-prefixed prompt, whose value at δ = 0 is part of v_init (a derived form's is not)
    # the share of the request's δ this row receives: 1 for its own prompts; a leak row (another
    # fact's prompt, KL only, essence slot past the essence prompts) gets what the update leaks to it
    scale: float = 1.0


def _value_rows(tok, request: EditRequest, target: str, contexts: list[str], kl_prompts: list[str],
                forms: list = (), leaks: list = (), objective: str = "insert") -> list[_Row]:
    """Every prompt of one request is one row: its context-prefixed rewrite prompts (with the
    target), the other forms it is asked in (``core.forms.Form``: the target too, no prefix),
    its essence prompts (no target) and, for each (fact, share) of ``leaks``, that fact's prompt
    receiving the share of δ (no target).

    A chat form whose assistant turn is the object alone (``chat_question``, ``chat_statement``)
    has the object where the model would start its answer, without a space ("Paris"). An
    erasure suppresses that token (the spaced " Paris" there is one the model never writes first,
    so making it unlikely erased nothing). An insertion keeps the spaced object in every row: it is
    how the model's whole-sentence chat answers say it, and trained on it ROME held in 29 of the
    33 tuning records' chat answers against 23 with "Paris" (2026-12-05, README, "The object
    where the assistant's turn starts")."""
    new_ids = target_ids(tok, target)
    rows = []
    for c in contexts:
        ids, sub = encode_with_subject(tok, c.replace("{}", request.prompt), request.subject)
        rows.append(_Row(0, -1, ids, sub, new_ids))
    for form in forms:
        ids, sub = encode_with_subject(tok, form.template, request.subject, chat=form.chat, reply=form.reply)
        said = new_ids
        if objective == "suppress":
            text, *_ = render(tok, form.template, request.subject, chat=form.chat, reply=form.reply)
            said = target_ids(tok, target, after=text)
        rows.append(_Row(0, -1, ids, sub, said, keyed=False))
    for e, kp in enumerate(kl_prompts):
        ids, sub = encode_with_subject(tok, kp, request.subject)
        rows.append(_Row(0, e, ids, sub, []))
    for j, (other, share) in enumerate(leaks):
        ids, sub = encode_with_subject(tok, other.prompt, other.subject)
        rows.append(_Row(0, len(kl_prompts) + j, ids, sub, [], keyed=False, scale=float(share)))
    return rows


def _cache_bytes_per_token(model) -> int | None:
    """Bytes of key/value cache one token costs on ``model`` (all layers), measured on one token."""
    from ..core.scoring import cache_of

    device = next(model.parameters()).device
    with torch.no_grad():
        cache = cache_of(model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device), use_cache=True))
    return _cache_bytes(cache) if cache is not None else None


# Rows of a chunk are left-padded to its longest prefix (they are sorted by the part after it):
# the first 100 CounterFact facts' padded prefixes hold 1.89x the tokens of the unpadded ones.
_PADDING_ALLOWANCE = 2.0


def _groups_within(rows_of: list[list[_Row]], bytes_per_token: int | None, budget: int) -> list[list[int]]:
    """Consecutive requests, grouped so that each group's prefix caches (estimated with padding)
    fit ``budget``; a request larger than the budget alone is a group of its own."""
    if bytes_per_token is None:
        return [list(range(len(rows_of)))]
    groups, size = [[]], 0.0
    for i, rows in enumerate(rows_of):
        need = _PADDING_ALLOWANCE * bytes_per_token * sum(row.split for row in rows)
        if groups[-1] and size + need > budget:
            groups.append([])
            size = 0.0
        groups[-1].append(i)
        size += need
    return groups
