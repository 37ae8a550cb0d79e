"""Editing metrics, with CounterFact's probability-comparison definitions (Meng et al. 2022, §4.2).

P(target | prompt) throughout is the *length-normalised* probability exp(mean token
log-probability of " " + target), as in ROME's evaluation code, so that targets of different
token counts compare fairly.

* efficacy: share of requests where P(target_new) > P(target_true) on the prompt (ES);
* generalisation: the same over all paraphrase prompts (PS);
* specificity: share of neighbourhood prompts where the true object still beats target_new (NS);
* fluency: n-gram entropy of a greedy continuation (``ngram_entropy`` below). Deviation: ROME
  samples 100 tokens from generation prompts; we decode greedily from the request prompt
  (deterministic), and split words with a regex instead of NLTK;
* perplexity on a fixed generic text (``generic_perplexity``): not a CounterFact metric but a
  collapse detector for long sequences of edits (Gupta et al. 2024 observe that sequential
  ROME collapses the model; perplexity shows it before the edit scores do).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..core.files import DATA_DIR
from ..core.text import leading_special_ids, make_batch, mentions, pad_id, says, target_ids, token_logprobs  # noqa: F401 (re-exported)
from ..editing.requests import EditRequest


def target_logprob(model, tok, prompts: list[str], targets: list[str], batch_size: int = 32) -> torch.Tensor:
    """Mean token log-probability of each " target" after each prompt (float64, CPU), through the
    shared evaluation engine (``scoring.score_pairs``: deduplicated, length-sorted batches)."""
    from ..core.scoring import score_pairs

    pairs = [(tok(p)["input_ids"], target_ids(tok, t)) for p, t in zip(prompts, targets)]
    scores = score_pairs(model, tok, pairs, batch_size=batch_size)
    return torch.tensor([sum(s.logp) / len(s.logp) for s in scores], dtype=torch.float64)


@dataclass
class _Query:
    request: int
    kind: str  # prompt | paraphrase | neighborhood
    prompt: str
    true: str
    new: str


def edit_table(model, tok, requests: list[EditRequest]) -> list[dict]:
    """Per request: P(target_true) and P(target_new) on the prompt, each paraphrase and each
    neighbourhood prompt (one batched pass over all of them)."""
    queries = []
    for i, r in enumerate(requests):
        if r.target_true is None:
            continue
        queries.append(_Query(i, "prompt", r.text, r.target_true, r.target_new))
        queries += [_Query(i, "paraphrase", p, r.target_true, r.target_new) for p in r.paraphrase_prompts]
        queries += [_Query(i, "neighborhood", n.prompt, n.target, r.target_new) for n in r.neighborhood]
    prompts = [q.prompt for q in queries] * 2
    targets = [q.true for q in queries] + [q.new for q in queries]
    logp = target_logprob(model, tok, prompts, targets)
    n = len(queries)
    return [{"request": q.request, "kind": q.kind, "prompt": q.prompt, "target_true": q.true,
             "target_new": q.new, "p_true": float(logp[j].exp()), "p_new": float(logp[n + j].exp())}
            for j, q in enumerate(queries)]


def summarise(table: list[dict]) -> dict:
    """Efficacy, generalisation and specificity from ``edit_table`` rows (None where no rows)."""
    def share(kind, new_wins):
        rows = [r for r in table if r["kind"] == kind]
        if not rows:
            return None
        hits = [(r["p_new"] > r["p_true"]) == new_wins for r in rows]
        return sum(hits) / len(hits)

    return {"efficacy": share("prompt", True), "generalisation": share("paraphrase", True),
            "specificity": share("neighborhood", False)}


def counterfact_suite(model, tok, requests: list[EditRequest], *, fluency_prompts: int = 100,
                      max_new_tokens: int = 40) -> dict:
    """The editing suite (``llm-edit eval --suite counterfact``): per-query probabilities, the
    three probability-comparison scores and fluency on the first ``fluency_prompts`` prompts."""
    import time

    from .edit_forms import generation_answers, generation_scores

    t0 = time.perf_counter()
    table = edit_table(model, tok, requests)
    scored = time.perf_counter() - t0
    prompts = [r.text for r in requests[:fluency_prompts]]
    flu = fluency(model, tok, prompts, max_new_tokens=max_new_tokens) if prompts else None
    t1 = time.perf_counter()
    ppl = generic_perplexity(model, tok)
    t2 = time.perf_counter()
    answers = generation_answers(model, tok, requests, progress=True)
    return {"rows": table, "answers": [dict(a.__dict__, holds=a.holds) for a in answers],
            "aggregates": {**summarise(table), "fluency": flu, "perplexity": ppl, **generation_scores(answers)},
            "timings": {"scoring_s": round(scored, 2), "fluency_s": round(t1 - t0 - scored, 2),
                        "perplexity_s": round(t2 - t1, 2), "generation_s": round(time.perf_counter() - t2, 2)},
            "conventions": {"probability": "exp(mean token log-probability of ' ' + target) (length-normalised)",
                            "fluency": f"n-gram entropy of greedy continuations ({max_new_tokens} tokens) of the "
                                       f"first {len(prompts)} prompts",
                            "generation": "gen_<form>: share of requests whose greedy answer (32 tokens) in that "
                                          "form names target_new and not target_true (all requests: the model "
                                          "before the edit is not at hand); see llm_edit/evaluating/edit_forms.py"}}


@torch.no_grad()
def fluency(model, tok, prompts: list[str], max_new_tokens: int = 40) -> float:
    """Mean n-gram entropy of greedy continuations of ``prompts`` (batched by ``scoring.generate``)."""
    from ..core.scoring import generate

    texts = generate(model, tok, [tok(p)["input_ids"] for p in prompts], max_new_tokens=max_new_tokens)
    return sum(ngram_entropy(re.findall(r"\w+|[^\w\s]", t.lower())) for t in texts) / len(texts)


@torch.no_grad()
def greedy(model, tok, prompt: str, max_new_tokens: int = 8) -> str:
    enc = tok(prompt, return_tensors="pt").to(next(model.parameters()).device)
    out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


# -- forget/retain items (question/answer, fact, text) ------------------------------------------

@torch.no_grad()
def answer_probability(model, tok, items, fmt, *, max_length: int = 256, batch_size: int = 16) -> list[float]:
    """Per item: exp(mean log-probability of the answer tokens) given the prompt, the same
    conventions as training (``forget_data``: facts without EOS, answers + EOS, text from its
    second token)."""
    from ..unlearning.items import collate, encode

    device = next(model.parameters()).device
    pad = pad_id(tok)
    out = []
    for i in range(0, len(items), batch_size):
        batch = collate([encode(tok, x, fmt, max_length) for x in items[i:i + batch_size]], pad).to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        total, count = token_logprobs(logits, batch.labels)
        out += (total / count.clamp(min=1)).exp().tolist()
    return out


@torch.no_grad()
def greedy_answers(model, tok, items, fmt, *, prompts: list[str] | None = None, max_new_tokens: int = 16,
                   batch_size: int = 16) -> list[str]:
    """Greedy continuation of each item's prompt (or of ``prompts[i]`` in the item's format: a
    paraphrase), batched with left padding. Text items continue their first 8 tokens."""
    from ..unlearning.items import prompt_ids

    device = next(model.parameters()).device
    pad = pad_id(tok)
    ids = []
    for j, item in enumerate(items):
        if item.kind == "text":
            ids.append(list(tok(item.answer)["input_ids"])[:8])
        else:
            ids.append(prompt_ids(tok, item, fmt, prompts[j] if prompts else None))
    stops = {t for t in (tok.eos_token_id, pad) if t is not None}
    out = []
    for i in range(0, len(ids), batch_size):
        chunk = ids[i:i + batch_size]
        width = max(len(x) for x in chunk)
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk], device=device)
        gen = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad)
        for row in gen[:, width:].tolist():
            cut = next((k for k, t in enumerate(row) if t in stops), len(row))
            out.append(tok.decode(row[:cut], skip_special_tokens=True))
    return out


def knows(kind: str, answer: str, greedy: str, rouge_threshold: float = 0.5) -> bool:
    """A fact is known when its object appears in the greedy answer; a question when the answer's
    ROUGE-L recall against the reference reaches ``rouge_threshold`` (the audit's criterion)."""
    if kind == "fact":
        return mentions(greedy, answer)
    from .tofu_metrics import rouge_l_recall

    return rouge_l_recall(greedy, answer) >= rouge_threshold


def answer_rows(model, tok, items, fmt, role: str) -> list[dict]:
    """P(answer) and the greedy answer of each item, for ``llm-edit forget``'s before/after table."""
    probs = answer_probability(model, tok, items, fmt)
    answers = greedy_answers(model, tok, items, fmt)
    return [{"role": role, "kind": x.kind, "prompt": x.prompt or x.answer[:40], "answer": x.answer,
             "p_answer": p, "greedy": g} for x, p, g in zip(items, probs, answers)]


def compare_forget_rows(before: list[dict], after: list[dict]) -> tuple[list[dict], dict]:
    """Rows with both sides and a status (``forget_status``), and per role: how many items were
    known before, and of those how many are forgotten (forget) or kept (neighbour, retain)."""
    rows = []
    for b, a in zip(before, after):
        known_before = knows(b["kind"], b["answer"], b["greedy"])
        known_after = knows(a["kind"], a["answer"], a["greedy"])
        rows.append({**{k: b[k] for k in ("role", "kind", "prompt", "answer")}, "p_before": b["p_answer"],
                     "p_after": a["p_answer"], "greedy_before": b["greedy"], "greedy_after": a["greedy"],
                     "known_before": known_before, "known_after": known_after,
                     "status": forget_status(b["role"], known_before, known_after)})
    summary = {}
    for role in dict.fromkeys(r["role"] for r in rows):
        mine = [r for r in rows if r["role"] == role]
        known = [r for r in mine if r["known_before"]]
        summary[role] = {"items": len(mine), "known_before": len(known),
                         ("forgotten" if role == "forget" else "kept"):
                             sum(r["known_after"] == (role != "forget") for r in known),
                         "mean_p_before": sum(r["p_before"] for r in mine) / len(mine),
                         "mean_p_after": sum(r["p_after"] for r in mine) / len(mine)}
    return rows, summary


def forget_status(role: str, known_before: bool, known_after: bool) -> str:
    """One row of ``llm-edit forget``'s table in words."""
    if not known_before:
        return "not known before"
    if role == "forget":
        return "forgotten" if not known_after else "STILL ANSWERED"
    return "kept" if known_after else "LOST"


def generic_perplexity(model, tok) -> float:
    """``perplexity`` on ``llm_edit/data/generic_text.txt`` (about 1,000 words of plain prose
    written for this project, so no model has seen it): the collapse detector of editing runs."""
    return perplexity(model, tok, (DATA_DIR / "generic_text.txt").read_text())


@torch.no_grad()
def perplexity(model, tok, text: str, *, window: int = 256, batch_size: int = 8) -> float:
    """exp(mean next-token NLL) over ``text`` cut into non-overlapping windows of ``window``
    tokens, no context carried across windows: a collapse detector, comparable only between
    models with the same tokenizer and window.

    Each window is framed as the tokenizer frames any text: where it puts a BOS first (Gemma),
    the window follows it and is scored from its first token; without one (SmolLM2), it is
    scored from its second. Gemma 3 270M without its BOS scores our generic text at perplexity
    100.5 instead of 17.8, a model state no prompt ever puts it in (README, "Perplexity with the
    tokenizer's BOS")."""
    device = next(model.parameters()).device
    ids = tok(text, add_special_tokens=False)["input_ids"]
    lead = leading_special_ids(tok)
    chunks = [ids[i:i + window] for i in range(0, len(ids), window) if len(ids[i:i + window]) > 1]
    total, count = 0.0, 0
    for i in range(0, len(chunks), batch_size):
        part = chunks[i:i + batch_size]
        prompts, targets = ([lead for _ in part], part) if lead else ([c[:1] for c in part], [c[1:] for c in part])
        batch = make_batch(pad_id(tok), prompts, targets).to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        logp, n = token_logprobs(logits, batch.labels)
        total -= float(logp.sum())
        count += int(n.sum())
    return float(torch.tensor(total / count).exp())


def ngram_entropy(tokens: list[str], orders=(2, 3), weights=(2 / 3, 4 / 3)) -> float:
    """Fluency: weighted mean of n-gram entropies of a text (ROME, Meng et al. 2022, §4.2;
    weights 2/3 and 4/3 for bi- and tri-grams as in its reference code). Low values mean a
    repetitive, degenerate generation. Entropies in bits."""
    values = []
    for n, w in zip(orders, weights):
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        if not grams:
            values.append(0.0)
            continue
        counts = torch.tensor(list(_count(grams).values()), dtype=torch.float64)
        freq = counts / counts.sum()
        values.append(w * float(-(freq * freq.log2()).sum()))
    return sum(values) / len(values)


def _count(items):
    out: dict = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out
