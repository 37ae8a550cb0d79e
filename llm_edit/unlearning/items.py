"""What to forget and what to keep: items of three shapes, and how they become training batches.

One object per line of a JSON Lines file (or JSON arrays: TOFU's files load as they are)::

    {"prompt": "The {} is located in the city of", "subject": "Eiffel Tower", "target": "Paris"}
    {"question": "Who wrote ...?", "answer": "..."}            # TOFU's format
    {"text": "A passage of raw text ..."}                      # MUSE-style

A fact may also carry ``paraphrase_prompts`` (used by evaluations, never trained on); a
question may carry TOFU's extra fields (``paraphrased_question``, ``perturbed_answer`` ...),
which are kept for the evaluation suite. Edit requests (``target_true``) are accepted as facts
so an editing file can be reused: the *true* object is what is forgotten.

Conventions, recorded in every run manifest:

* fact: ``prompt`` with the subject filled in, then `` target``; loss on the target tokens, no
  EOS (a fact is a sentence fragment that continues after the object);
* question/answer: through the tokenizer's chat template when it has one (the template's own
  default system prompt unless ``system_prompt`` is given), else ``"Question: ...\\nAnswer: "``;
  loss on the answer tokens + EOS;
* text: loss on every token after the first.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch

from ..core.files import FactFileError, parsed_records
from ..core.known import KNOWN_FACTS, Anchor, closest_known

PLAIN_QA_TEMPLATE = "Question: {question}\nAnswer: "

_FACT_KEYS = {"prompt", "subject", "target", "target_true", "target_new", "paraphrase_prompts", "neighborhood",
              "relation_id"}
_QA_KEYS = {"question", "answer", "paraphrased_question", "paraphrased_answer", "perturbed_answer",
            "perturbed_question", "option1", "option2", "option3", "option4", "idk"}
_TEXT_KEYS = {"text", "id", "source"}


@dataclass(frozen=True)
class ForgetItem:
    """One thing to forget (or keep): ``kind`` is ``fact``, ``qa`` or ``text``.

    ``prompt`` is the fact's filled-in prompt or the question (empty for text); ``answer`` is
    the object, the answer or the whole text."""

    kind: str
    prompt: str
    answer: str
    paraphrases: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["paraphrases"] = list(self.paraphrases)
        d["extra"] = dict(self.extra)
        return d


def parse_item(obj: Any, source: str = "<item>", line: int | None = None) -> ForgetItem:
    if isinstance(obj, ForgetItem):
        return obj

    def fail(field_name, message):
        raise FactFileError(source, line, field_name, message)

    if not isinstance(obj, Mapping):
        fail(None, f"expected a JSON object, got {type(obj).__name__}")

    def text(key: str, required: bool = True) -> str | None:
        value = obj.get(key)
        if value is None:
            if required:
                fail(key, "is missing")
            return None
        if not isinstance(value, str):
            fail(key, f"must be a string, got {type(value).__name__}")
        if not value.strip():
            fail(key, "is empty")
        return value

    def unknown(allowed: set[str]) -> None:
        extra = sorted(set(obj) - allowed)
        if extra:
            fail(extra[0], f"is not a known field (known: {', '.join(sorted(allowed))})")

    if "question" in obj or "answer" in obj:
        unknown(_QA_KEYS)
        question, answer = text("question"), text("answer")
        paraphrase = obj.get("paraphrased_question")
        extra = {k: v for k, v in obj.items() if k not in ("question", "answer")}
        return ForgetItem("qa", question, answer, (paraphrase,) if isinstance(paraphrase, str) else (), extra)
    if "text" in obj:
        unknown(_TEXT_KEYS)
        return ForgetItem("text", "", text("text"))
    if "prompt" in obj or "subject" in obj:
        unknown(_FACT_KEYS)
        prompt, subject = text("prompt"), text("subject")
        # "target" is the object to forget; an edit request's true object plays the same role.
        key = "target" if "target" in obj else "target_true"
        if key not in obj:
            fail("target", "is missing (the object to forget)")
        target = text(key)
        if "{}" in prompt:
            if prompt.count("{}") > 1:
                fail("prompt", "contains '{}' more than once")
            prompt = prompt.replace("{}", subject, 1)
        elif subject not in prompt:
            fail("subject", f"{subject!r} does not occur in the prompt {prompt!r}")
        paraphrases = obj.get("paraphrase_prompts", [])
        if isinstance(paraphrases, str):
            paraphrases = [paraphrases]
        if not isinstance(paraphrases, list) or not all(isinstance(p, str) and p.strip() for p in paraphrases):
            fail("paraphrase_prompts", "must be a list of non-empty strings")
        extra = {"subject": subject}
        if obj.get("relation_id") is not None:
            extra["relation_id"] = text("relation_id")
        neighbours = obj.get("neighborhood") or []
        if not isinstance(neighbours, list) or not all(
                isinstance(n, Mapping) and isinstance(n.get("prompt"), str) and isinstance(n.get("target"), str)
                and n["prompt"].strip() and n["target"].strip() for n in neighbours):
            fail("neighborhood", "must be a list of {prompt, target} objects with non-empty strings")
        if neighbours:  # facts that must survive: shown by `llm-edit forget` (else known facts are picked)
            extra["neighborhood"] = [{"prompt": n["prompt"], "target": n["target"]} for n in neighbours]
        return ForgetItem("fact", prompt, target.strip(), tuple(paraphrases), extra)
    fail(None, "is neither a fact (prompt, subject, target), a question (question, answer) nor text (text)")


def read_items(path: str | Path, limit: int | None = None) -> list[ForgetItem]:
    """Read and validate every item of ``path``; the first problem raises ``FactFileError``."""
    return [item for _, item in numbered_items(path, limit)]


def numbered_items(path: str | Path, limit: int | None = None) -> list[tuple[int, ForgetItem]]:
    """``read_items`` with each item's line (for messages about it later)."""
    return parsed_records(path, parse_item, limit, "items")


def item_texts(line: int | None, item: ForgetItem) -> Iterator[tuple[int | None, str, str, str]]:
    """(line, field, prompt, continuation) of what forgetting and its evaluation run the model on
    (``facts.check_context`` reads them; a ``text`` field is cut to ``max_length`` tokens by
    design, so only its size in characters is checked)."""
    if item.kind == "text":
        yield line, "text", "", item.answer
        return
    field_name = "question" if item.kind == "qa" else "prompt"
    yield line, field_name, item.prompt, " " + item.answer
    for i, p in enumerate(item.paraphrases):
        yield line, f"paraphrases[{i}]", p, " " + item.answer


def given_neighbours(items: list[ForgetItem]) -> list[ForgetItem]:
    """The ``neighborhood`` facts the forget file itself lists (edit requests carry them)."""
    return [ForgetItem("fact", n["prompt"], n["target"].strip(), (), {"neighbour_of": f.extra.get("subject")})
            for f in items for n in f.extra.get("neighborhood", ())]


def neighbour_facts(items: list[ForgetItem], per_item: int = 2, source: Path = KNOWN_FACTS,
                    pool: str | None = "eval") -> list[ForgetItem]:
    """Known facts (ROME's, shipped) closest to the forgotten ones (``core.known.closest_known``):
    for each forgotten fact, up to ``per_item`` that share its object ("the Louvre ... Paris" for
    "the Eiffel Tower ... Paris"), then ones that share its relation, never a forgotten subject.
    These are what forgetting damages first; they show whether it did. ``pool`` takes them from
    one half of the known facts (``known_pool``; None: all)."""
    facts = [f for f in items if f.kind == "fact"]
    if not facts:
        return []
    anchors = [Anchor(f.prompt, f.extra.get("subject", ""), f.answer, f.extra.get("relation_id")) for f in facts]
    return [ForgetItem("fact", c.fact["prompt"], c.fact["attribute"], (), {
        "subject": c.fact["subject"], "relation_id": c.fact.get("relation_id"), "known_id": c.fact.get("known_id"),
        "neighbour_of": anchors[c.anchor].subject, "shares": c.shares})
        for c in closest_known(anchors, per_item, pool, source)]


def items_sha256(items: Iterable[ForgetItem]) -> str:
    blob = "".join(json.dumps(i.to_dict(), sort_keys=True, default=str) + "\n" for i in items)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Formatting:
    """How question/answer items are turned into tokens (recorded in manifests)."""

    use_chat_template: bool = True
    system_prompt: str | None = None

    def describe(self, tok) -> dict:
        chat = self.use_chat_template and bool(getattr(tok, "chat_template", None))
        return {"qa_format": "chat_template" if chat else PLAIN_QA_TEMPLATE,
                "chat_template_sha256": hashlib.sha256(tok.chat_template.encode()).hexdigest() if chat else None,
                "system_prompt": self.system_prompt if chat else None,
                "fact_format": "prompt + ' ' + target, no EOS",
                "qa_loss": "answer tokens + EOS", "text_loss": "every token after the first"}


def question_prefix(tok, question: str, fmt: Formatting) -> list[int]:
    """Token ids that precede the answer of a question (chat turn or plain template)."""
    if fmt.use_chat_template and getattr(tok, "chat_template", None):
        messages = [{"role": "user", "content": question}]
        if fmt.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": fmt.system_prompt})
        ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        if isinstance(ids, Mapping):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    return list(tok(PLAIN_QA_TEMPLATE.format(question=question))["input_ids"])


def prompt_ids(tok, item: ForgetItem, fmt: Formatting, prompt: str | None = None) -> list[int]:
    """The ids a model sees before it answers ``item`` (``prompt`` replaces the item's own,
    for paraphrases)."""
    prompt = item.prompt if prompt is None else prompt
    reply = item.extra.get("reply")
    if reply is not None:  # a derived chat form (expand.py): the question, then the answer's first words
        return question_prefix(tok, prompt, fmt) + list(tok(reply, add_special_tokens=False)["input_ids"])
    if item.kind == "qa":
        return question_prefix(tok, prompt, fmt)
    if item.kind == "fact":
        return list(tok(prompt)["input_ids"])
    raise ValueError("text items have no prompt")


def answer_ids(tok, item: ForgetItem, answer: str | None = None) -> list[int]:
    answer = item.answer if answer is None else answer
    if item.kind == "fact":
        return list(tok(" " + answer.strip(), add_special_tokens=False)["input_ids"])
    ids = list(tok(answer, add_special_tokens=False)["input_ids"])
    return ids + [tok.eos_token_id] if item.kind == "qa" and tok.eos_token_id is not None else ids


def encode(tok, item: ForgetItem, fmt: Formatting, max_length: int, answer: str | None = None
           ) -> tuple[list[int], int]:
    """(ids, answer_start): the full sequence and where its loss starts, truncated to
    ``max_length`` from the right of the answer (the prompt is never cut)."""
    if item.kind == "text":
        ids = list(tok(item.answer)["input_ids"])[:max_length]
        return ids, 1
    prefix = prompt_ids(tok, item, fmt)
    ids = (prefix + answer_ids(tok, item, answer))[:max(max_length, len(prefix) + 1)]
    return ids, len(prefix)


@dataclass
class TrainBatch:
    """Right-padded ids with labels aligned to logits: ``labels[b, t]`` is the token predicted
    at position t (-100 where there is no loss), as in ``text.make_batch``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device) -> "TrainBatch":
        return TrainBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate(encoded: list[tuple[list[int], int]], pad_id: int) -> TrainBatch:
    width = max(len(ids) for ids, _ in encoded)
    n = len(encoded)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    for b, (ids, start) in enumerate(encoded):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        mask[b, : len(ids)] = 1
        # position t predicts token t+1: loss positions are start-1 .. len-2
        labels[b, start - 1: len(ids) - 1] = torch.tensor(ids[start:], dtype=torch.long)
    return TrainBatch(input_ids, mask, labels)
