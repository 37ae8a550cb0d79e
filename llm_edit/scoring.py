"""The evaluation engine: one teacher-forced pass per distinct (prompt, answer) pair, and
batched greedy generation. Every unlearning metric (``unlearning_metrics``) is a pure function
of what these two return, so a suite scores each pair once however many metrics read it.

``score_pairs`` keeps, for every answer token t (the tokens after the prompt):

* ``logp[t]``   log p(x_t | x_<t), the token's log-probability;
* ``hit[t]``    whether x_t is the argmax (teacher-forced greedy agreement);
* ``mu[t]``, ``sigma[t]``  mean and standard deviation of log p(z | x_<t) for z drawn from the
  model's own next-token distribution: Min-K%++'s normalisers (Zhang et al. 2024, eq. 3).

Pairs are deduplicated and sorted by length before batching, so padding is small and a pair
that several metrics share (the answer for probability, MIA and memorisation) costs one pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


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


def _pad_id(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


@torch.no_grad()
def score_pairs(model, tok, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *, batch_size: int = 16,
                progress: bool = False, desc: str = "scoring") -> list[TokenScores]:
    """Teacher-forced scores of each (prompt ids, answer ids) pair; answers must be non-empty."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    keys = [(tuple(p), tuple(a)) for p, a in pairs]
    for i, (p, a) in enumerate(keys):
        if not a or not p:
            raise ValueError(f"pair {i}: the prompt and the answer must each have at least one token")
    unique = sorted(set(keys), key=lambda k: len(k[0]) + len(k[1]))
    done: dict[tuple, TokenScores] = {}
    pad = _pad_id(tok)
    bar = tqdm(total=len(unique), desc=desc, unit="seq", disable=not progress, leave=False)
    for i in range(0, len(unique), batch_size):
        chunk = unique[i:i + batch_size]
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, (p, a) in enumerate(chunk):
            seq = list(p) + list(a)
            ids[b, :len(seq)] = torch.tensor(seq)
            mask[b, :len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        for b, (p, a) in enumerate(chunk):
            # position t predicts token t+1: the answer's tokens are predicted at len(p)-1 .. len(p)+len(a)-2
            rows = logits[b, len(p) - 1: len(p) + len(a) - 1].double()
            labels = torch.tensor(a, device=rows.device)
            logprobs = torch.log_softmax(rows, dim=-1)
            probs = logprobs.exp()
            mu = (probs * logprobs).sum(-1)
            sigma = ((probs * logprobs.square()).sum(-1) - mu.square()).clamp(min=0).sqrt()
            done[(p, a)] = TokenScores(tuple(logprobs.gather(1, labels[:, None])[:, 0].tolist()),
                                       tuple((rows.argmax(-1) == labels).tolist()),
                                       tuple(mu.tolist()), tuple(sigma.tolist()))
        bar.update(len(chunk))
    bar.close()
    return [done[k] for k in keys]


@torch.no_grad()
def generate(model, tok, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 200,
             stop_strings: Sequence[str] = (), batch_size: int = 16, progress: bool = False,
             desc: str = "generating") -> list[str]:
    """Greedy continuations of token-id prompts, batched with left padding (sorted by length so
    rows of a batch have similar prompts). A row ends at EOS or at the first stop string, which
    is cut from the returned text; the batch ends when every row has."""
    from tqdm.auto import tqdm
    from transformers import StoppingCriteria, StoppingCriteriaList

    device = next(model.parameters()).device
    pad = _pad_id(tok)
    eos = {t for t in (tok.eos_token_id, getattr(model.generation_config, "eos_token_id", None)) if t is not None
           and not isinstance(t, list)}
    if isinstance(getattr(model.generation_config, "eos_token_id", None), list):
        eos |= set(model.generation_config.eos_token_id)
    stop_strings = [s for s in stop_strings if s]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str | None] = [None] * len(prompts)

    def cut(row: list[int]) -> str:
        end = next((k for k, t in enumerate(row) if t in eos), len(row))
        text = tok.decode(row[:end], skip_special_tokens=True)
        hits = [text.find(s) for s in stop_strings if s in text]
        return text[: min(hits)] if hits else text

    class StopStrings(StoppingCriteria):
        """Per row: done once its new tokens hold a stop string (generate then pads the row)."""

        def __init__(self, width: int):
            self.width = width

        def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
            new = input_ids[:, self.width:].tolist()
            done = [any(s in tok.decode(row, skip_special_tokens=True) for s in stop_strings) for row in new]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    bar = tqdm(total=len(prompts), desc=desc, unit="answer", disable=not progress, leave=False)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        chunk = [list(prompts[j]) for j in idx]
        width = max(len(x) for x in chunk)
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk], device=device)
        criteria = StoppingCriteriaList([StopStrings(width)]) if stop_strings else None
        gen = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False, top_p=None, top_k=None,
                             temperature=None, max_new_tokens=max_new_tokens, pad_token_id=pad,
                             stopping_criteria=criteria)
        for j, row in zip(idx, gen[:, width:].tolist()):
            out[j] = cut(row)
        bar.update(len(idx))
    bar.close()
    return out  # type: ignore[return-value]
