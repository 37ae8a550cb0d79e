"""The evaluation engine: one teacher-forced pass per distinct (prompt, answer) pair, and
batched greedy generation. Every unlearning metric (``unlearning_metrics``) is a pure function
of what these two return, so a suite scores each pair once however many metrics read it.

``score_pairs`` keeps, for every answer token t (the tokens after the prompt):

* ``logp[t]``   log p(x_t | x_<t), the token's log-probability;
* ``hit[t]``    whether x_t is the argmax (teacher-forced greedy agreement);
* ``mu[t]``, ``sigma[t]``  mean and standard deviation of log p(z | x_<t) for z drawn from the
  model's own next-token distribution: Min-K%++'s normalisers (Zhang et al. 2024, eq. 3).

Pairs are deduplicated, so a pair that several metrics share (the answer for probability, MIA
and memorisation) costs one pass, and answers to the same prompt share the prompt's pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .text import pad_id


@dataclass(frozen=True)
class TokenScores:
    """Per answer token: log-probability, argmax hit, and Min-K%++'s μ and σ."""

    logp: tuple[float, ...]
    hit: tuple[bool, ...]
    mu: tuple[float, ...]
    sigma: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"logp": list(self.logp), "hit": [int(h) for h in self.hit], "mu": list(self.mu),
                "sigma": list(self.sigma)}

    @classmethod
    def from_dict(cls, d: dict) -> "TokenScores":
        return cls(tuple(d["logp"]), tuple(bool(h) for h in d["hit"]), tuple(d["mu"]), tuple(d["sigma"]))


@torch.no_grad()
def score_pairs(model, tok, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *, batch_size: int = 16,
                progress: bool = False, desc: str = "scoring", share_prompts: bool = True) -> list[TokenScores]:
    """Teacher-forced scores of each (prompt ids, answer ids) pair; answers must be non-empty.

    With ``share_prompts`` (the default) a prompt is run once and its key/value cache serves all
    the answers that follow it: a TOFU item's answer, paraphrase and five perturbations share
    one question, so this roughly halves the tokens a suite runs. ``batch_size`` counts answers.
    """
    from tqdm.auto import tqdm

    keys = [(tuple(p), tuple(a)) for p, a in pairs]
    for i, (p, a) in enumerate(keys):
        if not a or not p:
            raise ValueError(f"pair {i}: the prompt and the answer must each have at least one token")
    unique = set(keys)
    bar = tqdm(total=len(unique), desc=desc, unit="seq", disable=not progress, leave=False)
    try:
        score = _score_shared_prompts if share_prompts else _score_whole_sequences
        done = score(model, pad_id(tok), unique, batch_size, bar)
    except _NoSharableCache:  # a model whose cache cannot be narrowed per row: whole sequences
        bar.reset()
        done = _score_whole_sequences(model, pad_id(tok), unique, batch_size, bar)
    bar.close()
    return [done[k] for k in keys]


def _token_scores(rows: torch.Tensor, answer: Sequence[int]) -> TokenScores:
    """Scores of ``answer`` from the logits that predict its tokens (one row per token)."""
    rows = rows.double()
    labels = torch.tensor(answer, device=rows.device)
    logprobs = torch.log_softmax(rows, dim=-1)
    probs = logprobs.exp()
    mu = (probs * logprobs).sum(-1)
    sigma = ((probs * logprobs.square()).sum(-1) - mu.square()).clamp(min=0).sqrt()
    return TokenScores(tuple(logprobs.gather(1, labels[:, None])[:, 0].tolist()),
                       tuple((rows.argmax(-1) == labels).tolist()), tuple(mu.tolist()), tuple(sigma.tolist()))


def _score_whole_sequences(model, pad: int, unique, batch_size: int, bar) -> dict:
    """One right-padded pass per batch of whole (prompt + answer) sequences."""
    device = next(model.parameters()).device
    done = {}
    ordered = sorted(unique, key=lambda k: (len(k[0]) + len(k[1]), k))
    for i in range(0, len(ordered), batch_size):
        chunk = ordered[i:i + batch_size]
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, (p, a) in enumerate(chunk):
            ids[b, :len(p) + len(a)] = torch.tensor(p + a)
            mask[b, :len(p) + len(a)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        for b, (p, a) in enumerate(chunk):
            # position t predicts token t+1: the answer's tokens are predicted at len(p)-1 .. len(p)+len(a)-2
            done[(p, a)] = _token_scores(logits[b, len(p) - 1: len(p) + len(a) - 1], a)
        bar.update(len(chunk))
    return done


class _NoSharableCache(Exception):
    pass


def _score_shared_prompts(model, pad: int, unique, batch_size: int, bar) -> dict:
    """Prompts left-padded through the model once (keeping the cache); then their answers,
    sorted by length so padding stays small, ``batch_size`` at a time on top of a copy of the
    prompts' cache narrowed to each answer's prompt."""
    import copy

    device = next(model.parameters()).device
    groups: dict[tuple, list[tuple]] = {}
    for p, a in unique:
        groups.setdefault(p, []).append(a)
    prompts = sorted(groups, key=lambda p: (len(p), p))
    last_only, cache_arg = forward_options(model)
    done = {}
    start = 0
    while start < len(prompts):
        # a few answer batches' worth of prompts per prompt pass, so answers can be length-sorted
        end, n_answers = start, 0
        while end < len(prompts) and (end == start or n_answers + len(groups[prompts[end]]) <= 4 * batch_size):
            n_answers += len(groups[prompts[end]])
            end += 1
        chunk = prompts[start:end]
        start = end
        width = max(len(p) for p in chunk)
        prompt_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in chunk], device=device)
        prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask,
                    position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0), use_cache=True, **last_only)
        first = out.logits[:, -1]  # left padding: the last column predicts every answer's first token
        prompt_cache = cache_of(out)
        if not hasattr(prompt_cache, "batch_select_indices"):
            raise _NoSharableCache
        rows = sorted(((g, a) for g, p in enumerate(chunk) for a in groups[p]), key=lambda r: (len(r[1]), r))
        for i in range(0, len(rows), batch_size):
            batch = rows[i:i + batch_size]
            owner = torch.tensor([g for g, _ in batch], device=device)
            cache = copy.deepcopy(prompt_cache)
            cache.batch_select_indices(owner)
            answer_width = max(len(a) for _, a in batch)
            answer_ids = torch.tensor([list(a) + [pad] * (answer_width - len(a)) for _, a in batch], device=device)
            answer_mask = torch.tensor([[1] * len(a) + [0] * (answer_width - len(a)) for _, a in batch],
                                       device=device)
            prompt_lengths = torch.tensor([len(chunk[g]) for g, _ in batch], device=device)
            positions = prompt_lengths[:, None] + torch.arange(answer_width, device=device)
            logits = model(input_ids=answer_ids, attention_mask=torch.cat([prompt_mask[owner], answer_mask], 1),
                           position_ids=positions, use_cache=True, **{cache_arg: cache}).logits
            for r, (g, a) in enumerate(batch):
                done[(chunk[g], a)] = _token_scores(torch.cat([first[g:g + 1], logits[r, :len(a) - 1]]), a)
            bar.update(len(batch))
    return done


def forward_options(model) -> tuple[dict, str]:
    """``logits_to_keep=1`` where the model takes it, and the name of its cache argument
    (``past_key_values``, renamed ``cache`` in later transformers)."""
    import inspect

    # a peft wrapper's forward takes **kwargs and hands them on: ask the model inside it
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(inner.forward).parameters
    return ({"logits_to_keep": 1} if "logits_to_keep" in params else {},
            "cache" if "cache" in params else "past_key_values")


def cache_of(output):
    cache = output.get("cache", None)
    return cache if cache is not None else output.get("past_key_values", None)


@torch.no_grad()
def generate(model, tok, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 200,
             stop_strings: Sequence[str] = (), batch_size: int = 16, progress: bool = False,
             desc: str = "generating", stop_after_text: bool = False) -> list[str]:
    """Greedy continuations of token-id prompts, batched with left padding (sorted by length so
    rows of a batch have similar prompts). A row ends at EOS or at the first stop string, which
    is cut from the returned text. With ``stop_after_text`` a stop string counts only after the
    answer's leading whitespace: a model that opens its answer on a new line ("Answer:\nHindi")
    is read from there, where a stop at "\n" would otherwise return "" and a judge would read
    that as nothing said. A stop string that itself begins with whitespace ("\nQuestion:")
    then cannot end an answer at its very start.

    The decoding loop is ours rather than ``model.generate``'s for two savings that leave the
    greedy tokens as they are: the prefix that every prompt of a batch shares (a chat template's
    system turn, the same in-context examples) goes through the model once, and a row leaves
    the batch as soon as it has ended, so a batch costs its rows' own lengths, not 
    ``max_new_tokens`` whenever one row rambles."""
    from tqdm.auto import tqdm

    pad = pad_id(tok)
    eos = {t for t in (tok.eos_token_id, getattr(model.generation_config, "eos_token_id", None)) if t is not None
           and not isinstance(t, list)}
    if isinstance(getattr(model.generation_config, "eos_token_id", None), list):
        eos |= set(model.generation_config.eos_token_id)
    stop_strings = [s for s in stop_strings if s]
    # A stop string is found in the step that completes it, so each step decodes only the newest
    # tokens: enough of them to hold the longest stop string, not the whole answer so far.
    window = 4 + max((len(tok(s, add_special_tokens=False)["input_ids"]) for s in stop_strings), default=0)

    def ended(row: list[int]) -> bool:
        if row[-1] in eos or len(row) >= max_new_tokens:
            return True
        if not stop_strings:
            return False
        if stop_after_text:  # the whole answer: whether any text came yet is not in the window alone
            text = tok.decode(row, skip_special_tokens=True).lstrip()
            return any(s in text for s in stop_strings)
        return any(s in tok.decode(row[-window:], skip_special_tokens=True) for s in stop_strings)

    def cut(row: list[int]) -> str:
        end = next((k for k, t in enumerate(row) if t in eos), len(row))
        text = tok.decode(row[:end], skip_special_tokens=True)
        start = len(text) - len(text.lstrip()) if stop_after_text else 0
        hits = [text.find(s, start) for s in stop_strings if s in text[start:]]
        return text[: min(hits)] if hits else text

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, unit="answer", disable=not progress, leave=False)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        rows = _greedy_batch(model, [list(prompts[j]) for j in idx], pad, max_new_tokens, ended)
        for j, row in zip(idx, rows):
            out[j] = cut(row)
        bar.update(len(idx))
    bar.close()
    return out  # type: ignore[return-value]


def _shared_prefix(prompts: list[list[int]]) -> int:
    """Length of the prefix all prompts share, leaving each at least one token of its own."""
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for k in range(max(n, 0)):
        if any(p[k] != first[k] for p in prompts):
            return k
    return max(n, 0)


def sliding_window(model) -> int | None:
    """The attention window of the model's sliding-window layers, if it has any."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not isinstance(window, int) or (layer_types is not None and "sliding_attention" not in layer_types):
        return None
    return window


def _greedy_batch(model, prompts: list[list[int]], pad: int, max_new_tokens: int, ended) -> list[list[int]]:
    """Greedy tokens for one batch: the shared prefix once, then the rest of each prompt
    left-padded after it (position ids skip the padding), then one token per live row per step;
    rows for which ``ended(tokens)`` holds leave the batch."""
    device = next(model.parameters()).device
    last_only, cache_arg = forward_options(model)
    n = len(prompts)
    shared, cache = _shared_prefix(prompts), None
    window = sliding_window(model)
    # A sliding-window cache keeps only the window's last tokens, and a wrapper such as Gemma 3's
    # multimodal one masks the padded rest as if it kept them all: share only what cannot slide.
    fits = window is None or max(len(p) for p in prompts) + max_new_tokens <= window
    if shared >= 8 and fits:  # below 8 the extra pass costs more than it saves
        prefix = torch.tensor([prompts[0][:shared]], device=device)
        cache = cache_of(model(input_ids=prefix, use_cache=True))
        if hasattr(cache, "batch_repeat_interleave"):
            cache.batch_repeat_interleave(n)
        else:
            shared, cache = 0, None
    else:
        shared = 0
    rest = [p[shared:] for p in prompts]
    width = max(len(r) for r in rest)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rest], device=device)
    mask = torch.tensor([[1] * shared + [0] * (width - len(r)) + [1] * len(r) for r in rest], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits_out = model(input_ids=ids, attention_mask=mask, position_ids=positions[:, shared:], use_cache=True,
                       **{cache_arg: cache}, **last_only)
    cache = cache_of(logits_out)
    next_tokens = logits_out.logits[:, -1].argmax(-1)
    position = positions[:, -1] + 1
    generated: list[list[int]] = [[] for _ in range(n)]
    live = list(range(n))  # the prompt each row of the batch belongs to
    narrowable = hasattr(cache, "batch_select_indices")
    finished = [False] * n
    while True:
        for k, token in zip(live, next_tokens.tolist()):
            if not finished[k]:
                generated[k].append(token)
                finished[k] = ended(generated[k])
        if all(finished[k] for k in live):
            return generated
        if narrowable and any(finished[k] for k in live):
            keep = [r for r, k in enumerate(live) if not finished[k]]
            select = torch.tensor(keep, device=device)
            cache.batch_select_indices(select)
            mask, position, next_tokens = mask[select], position[select], next_tokens[select]
            live = [live[r] for r in keep]
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], 1)
        step = model(input_ids=next_tokens[:, None], attention_mask=mask, position_ids=position[:, None],
                     use_cache=True, **{cache_arg: cache})
        cache = cache_of(step)
        next_tokens = step.logits[:, -1].argmax(-1)
        position = position + 1
