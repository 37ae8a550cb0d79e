"""The prompts value optimisation runs, as rows, and how they are batched.

Every prompt of a request is one ``_Row``: its context-prefixed rewrite prompts (with the
target) and its essence prompts (KL only). Rows are sent in fixed chunks (``_PromptChunk``),
each split at the subject's last token, where δ enters: the prefix before it never changes, so
it runs once without gradients and its key/value cache is kept while the group's budget lasts.
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


class _PromptChunk:
    """A fixed batch of value-optimisation rows, each split at the subject's last token (where
    δ enters): the prefix before it does not depend on δ, so it goes through the model without
    gradients, once, and its key/value cache is kept while the budget lasts (else rebuilt each
    step); only the rest (subject token, prompt tail, target) is run with δ, every step.
    Prefixes are left-padded and the rest right-padded after them, position ids skipping the
    padding, so each row sees exactly its own tokens."""

    def __init__(self, rows: list[tuple], pad: int, device):
        self.rows = rows
        prefixes = [row.ids[:row.split] for row in rows]
        rests = [(row.ids + row.target[:-1])[row.split:] for row in rows]
        width_p, width_r = max(len(p) for p in prefixes), max(len(r) for r in rests)
        self.prefix_ids = torch.tensor([[pad] * (width_p - len(p)) + p for p in prefixes], device=device)
        self.prefix_mask = torch.tensor([[0] * (width_p - len(p)) + [1] * len(p) for p in prefixes], device=device)
        self.rest_ids = torch.tensor([r + [pad] * (width_r - len(r)) for r in rests], device=device)
        self.rest_mask = torch.tensor([[1] * len(r) + [0] * (width_r - len(r)) for r in rests], device=device)
        self.positions = torch.tensor([len(p) for p in prefixes], device=device)[:, None] + torch.arange(
            width_r, device=device)
        self.labels = torch.full((len(rows), width_r), -100, dtype=torch.long, device=device)
        for b, row in enumerate(rows):
            for j, token in enumerate(row.target):  # target token j is predicted at len(ids) - 1 + j
                self.labels[b, len(row.ids) - 1 + j - row.split] = token
        self.cache = None

    def inputs(self, select):
        """Ids, attention mask (prefix and rest), position ids and labels of the selected rows."""
        pick = (lambda t: t) if select is None else (lambda t: t[select])
        mask = self.rest_mask if self.prefix_ids.shape[1] == 0 else torch.cat([self.prefix_mask, self.rest_mask], 1)
        return pick(self.rest_ids), pick(mask), pick(self.positions), pick(self.labels)

    def prefix_cache(self, model, select, room: "_CacheBudget"):
        """A cache of the selected rows' prefixes to run the rest on (a copy: running appends)."""
        import copy

        from ..core.scoring import cache_of

        if self.prefix_ids.shape[1] == 0:
            return None
        if self.cache is None:
            ids, mask = ((self.prefix_ids, self.prefix_mask) if select is None
                         else (self.prefix_ids[select], self.prefix_mask[select]))
            with torch.no_grad():
                cache = cache_of(model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(
                    min=0), use_cache=True))
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
