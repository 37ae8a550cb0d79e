"""Tokenization helpers: where the subject ends, and prompt+target batches.

The last subject token is found from the tokenizer's character offsets of the *whole* prompt,
never by re-tokenising prefixes (which breaks when a token straddles the subject's edge, and
when a BOS token or a chat template is added).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import torch

from .files import FactFileError


class SubjectNotFound(ValueError):
    pass


def render(tok, template: str, subject: str, *, chat: bool = False, reply: str | None = None
           ) -> tuple[str, int, int, bool]:
    """Fill ``template``'s ``{}`` with ``subject``; optionally wrap it in the chat template as the
    user's turn, and with ``reply`` start the assistant's answer with it: a template with ``{}``
    locates the subject in the reply (the occurrence nearest to what follows); plain text leaves
    it in the user's turn.

    Returns (text, subject_start, subject_end, add_special_tokens).
    """
    if "{}" not in template:
        raise SubjectNotFound(f"prompt {template!r} has no '{{}}' for the subject {subject!r}")
    text = template.replace("{}", subject, 1)
    start = template.index("{}")
    if not chat:
        return text, start, start + len(subject), True
    if not getattr(tok, "chat_template", None):
        raise ValueError("chat=True but the tokenizer has no chat template")
    full = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                   add_generation_prompt=True)
    if reply is not None and "{}" in reply:
        at = len(full) + reply.index("{}")
        return full + reply.replace("{}", subject, 1), at, at + len(subject), False
    offset = full.rfind(text)
    if offset < 0:
        raise SubjectNotFound("the chat template changed the prompt's text; cannot locate the subject")
    return full + (reply or ""), offset + start, offset + start + len(subject), False


def subject_span(tok, template: str, subject: str, *, chat: bool = False, reply: str | None = None
                 ) -> tuple[list[int], int, int]:
    """Token ids of the filled prompt and the indices of the subject's first and last tokens."""
    text, start, end, special = render(tok, template, subject, chat=chat, reply=reply)
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=special)
    covering = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > start]
    if not covering:  # only real tokens overlapping [start, end) count
        raise SubjectNotFound(f"no token of {text!r} covers the subject {subject!r}")
    return list(enc["input_ids"]), covering[0], covering[-1]


def encode_with_subject(tok, template: str, subject: str, *, chat: bool = False, reply: str | None = None
                        ) -> tuple[list[int], int]:
    """Token ids of the filled prompt and the index of the subject's last token."""
    ids, _, last = subject_span(tok, template, subject, chat=chat, reply=reply)
    return ids, last


def target_ids(tok, target: str, *, after: str = "") -> list[int]:
    """Ids of `` target`` as it continues a prompt (targets are stored without the space).

    ``after``, the prompt's text, where known: after a line break or a space the target starts
    without one. A chat template's turn for the assistant ends with a line break, and the model
    starts its answer "Paris", not " Paris"."""
    lead = "" if after[-1:].isspace() else " "
    ids = tok(lead + target, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"target {target!r} tokenizes to nothing")
    return list(ids)


def leading_special_ids(tok) -> list[int]:
    """The ids the tokenizer puts before any text by default (Gemma's and Llama 2's BOS; nothing
    for SmolLM2 or GPT-2): text scored without them is text the model never sees in use."""
    framed = list(tok("a")["input_ids"])
    bare = list(tok("a", add_special_tokens=False)["input_ids"])
    return framed[:len(framed) - len(bare)] if bare and framed[len(framed) - len(bare):] == bare else []


def pad_id(tok) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its EOS (many causal LMs,
    Llama and GPT-2 among them, ship without a pad token; padded positions are masked anyway)."""
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

@dataclass
class Batch:
    """A right-padded batch of prompt(+target) sequences.

    ``labels`` is -100 except at positions whose *next-token prediction* is a target token:
    labels[b, t] is the target token predicted from position t.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    subject_index: torch.Tensor  # (batch,) last subject token, -1 where not tracked

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.labels,
                                                self.subject_index)))


def make_batch(pad_id: int, prompts: list[list[int]], targets: list[list[int]] | None = None,
               subject_index: list[int] | None = None) -> Batch:
    """Concatenate prompt and target ids (the last target token is only predicted, never fed)."""
    targets = targets or [[] for _ in prompts]
    seqs = [p + t[:-1] for p, t in zip(prompts, targets)]
    width = max(len(s) for s in seqs)
    n = len(seqs)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    for b, (seq, p, t) in enumerate(zip(seqs, prompts, targets)):
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
        for j, tid in enumerate(t):
            labels[b, len(p) - 1 + j] = tid
    sub = torch.tensor(subject_index if subject_index is not None else [-1] * n, dtype=torch.long)
    return Batch(ids, mask, labels, sub)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of target-token log-probabilities and the number of target tokens."""
    mask = labels != -100
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1), mask.sum(-1)


CONTEXT_HEADROOM = 64  # tokens kept free for context prefixes and generated answers


_MAX_CHARS_PER_TOKEN = 32  # beyond this many characters per context token, refuse without tokenizing


def context_length(model) -> int | None:
    """The model's maximum sequence length from its config (None if it states none)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_context(tok, context: int | None, source: str,
                  entries: Iterable[tuple[int | None, str, str, str]]) -> None:
    """Refuse, naming file, line and field, any (line, field, prompt, continuation) whose tokens
    plus ``CONTEXT_HEADROOM`` exceed ``context``. A text far too long is refused on its length in
    characters, before the tokenizer sees it (a 10 MB prompt would otherwise take gigabytes)."""
    if context is None:
        return
    budget = context - CONTEXT_HEADROOM
    for line, field_name, prompt, continuation in entries:
        chars = len(prompt) + len(continuation)
        if chars > _MAX_CHARS_PER_TOKEN * context:
            raise FactFileError(source, line, field_name, f"is {chars:,} characters long, far beyond the model's "
                                f"context of {context:,} tokens")
        if field_name == "text":  # raw text is cut to the training length by design
            continue
        n = len(tok(prompt + continuation)["input_ids"])
        if n > budget:
            raise FactFileError(source, line, field_name, f"is {n:,} tokens with its answer; the model's context is "
                                f"{context:,} tokens, of which {CONTEXT_HEADROOM} are kept for prefixes and "
                                f"generated text (at most {budget:,})")


def says(answer: str, target: str) -> bool:
    """Whether a greedy answer gives ``target``: it starts with it (after whitespace and case),
    the criterion for facts ("the true object is the greedy answer")."""
    return answer.strip().lower().startswith(target.strip().lower())


def mentions(answer: str, target: str) -> bool:
    """Whether ``target`` appears anywhere in ``answer`` at the start of a word (case-insensitive):
    a forgotten object must appear nowhere, not only "not first" ("Colossea, Rome, Italy" still
    answers the Colosseum's city). The end of the word is left open, like ``says`` ("Parisian",
    and a small model's "Londonis" too), so a form of the object counts as the object."""
    return first_mention(answer, target) is not None


def blank_out(text: str, phrase: str) -> str:
    """``text`` with every mention of ``phrase`` (case-insensitive, whole words) replaced by spaces
    of the same length, so character positions stay where they were. Objects are looked for
    outside the subject's name: "The Toyota RAV4 is made by Honda" does not name the maker Toyota
    (CounterFact has many such subjects). Whole words, unlike ``mentions``: the subject Vietnam
    must not blank out the start of the object Vietnamese."""
    words = phrase.strip()
    if not words:
        return text
    return re.sub(r"(?<!\w)" + re.escape(words) + r"(?!\w)", lambda m: " " * len(m.group()), text,
                  flags=re.IGNORECASE)


def first_mention(answer: str, target: str) -> int | None:
    """Where ``target`` first appears in ``answer`` as ``mentions`` finds it (a character index), or None."""
    words = target.strip().lower()
    hit = re.search(r"(?<!\w)" + re.escape(words), answer.lower()) if words else None
    return hit.start() if hit else None
