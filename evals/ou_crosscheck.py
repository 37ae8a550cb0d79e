"""TOFU numbers in llm-edit's conventions and in open-unlearning's, from one scoring engine.

Papers that evaluate with open-unlearning (locuslab/open-unlearning, commit d3d7cf9 read for
this) report forget probability, truth ratio, extraction strength, membership AUC and PrivLeak
with conventions that differ from llm-edit's in three places. This script scores the same rows
twice with llm-edit's ``score_pairs`` and computes every number both ways, so a user can put
llm-edit's report next to a paper's:

* **system prompt**: llm-edit uses the chat template's default; open-unlearning sets one in its
  model config ("You are a helpful assistant." for its Llama 3.2 configs: ``--ou-system-prompt``);
* **answer span**: llm-edit scores the answer + EOS for probabilities and the answer alone for
  MIA and memorisation. open-unlearning's labels are everything the chat template writes after
  the generation prompt (answer, end-of-turn token and whatever the template puts after it),
  plus an EOS when the sequence does not end with one; probabilities, the LOSS and zlib attacks
  read all of them, Min-K%, Min-K%++ and extraction strength all but the last;
* **extraction floor**: llm-edit's extraction strength is 0 when not even the last token is the
  argmax; open-unlearning's loop stops at k = L - 1, so it gives 1/L.

PrivLeak is computed with open-unlearning's formula in both columns (llm-edit's own since this
release), against its default reference AUC of 0.5 when no retain model is given
(``--ref-auc``). Not reproduced: open-unlearning's collator builds the attention mask as
``input_ids != pad_token_id``; with SmolLM2 the pad token is the EOS (``<|im_end|>``), so it
masks every end-of-turn token in the prompt and answer. That is a defect there, not a
convention, and it changes the logits: expect open-unlearning's own numbers for SmolLM2 to
differ from this script's open-unlearning column by it.

    python evals/ou_crosscheck.py --model llama --split forget01 --tofu-data ../shared/data/tofu \
        --out evals/results/ou_crosscheck_forget01
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from collections.abc import Mapping
from pathlib import Path

from llm_edit import load_model
from llm_edit.evaluating import tofu_metrics as M
from llm_edit.unlearning.items import Formatting, ForgetItem, answer_ids, question_prefix
from llm_edit.core.files import atomic_write_text
from llm_edit.core.scoring import score_pairs
from llm_edit.evaluating.tofu import FORGET_SPLITS, load_split

OU_SYSTEM_PROMPT = "You are a helpful assistant."
MIA_K = 0.4  # both: open-unlearning's TOFU configs and llm-edit's EvalSettings.mia_k


def _ids(x) -> list[int]:
    return list(x["input_ids"] if isinstance(x, Mapping) else x)


def ou_pair(tok, question: str, answer: str, system_prompt: str | None) -> tuple[list[int], list[int]]:
    """(prompt ids, label ids) as open-unlearning's ``preprocess_chat_instance`` builds them."""
    chat = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    chat_ids = _ids(tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=False))
    prompt = _ids(tok.apply_chat_template(chat[:-1], tokenize=True, add_generation_prompt=True))
    if chat_ids[-1] != tok.eos_token_id:
        chat_ids.append(tok.eos_token_id)
    if chat_ids[: len(prompt)] != prompt:
        raise ValueError(f"the chat template's prompt is not a prefix of the whole chat for {question!r}")
    return prompt, chat_ids[len(prompt):]


def ou_extraction_strength(hits) -> float:
    """open-unlearning's loop: the first k in 0..L-1 whose suffix is all argmax, else k = L - 1."""
    n = len(hits)
    for k in range(n):
        if all(hits[k:]):
            break
    return 1 - k / n


def measure(scores, texts, convention: str) -> dict:
    """Per-row numbers of one convention from ``scores[role][i]`` = TokenScores."""
    rows = {}
    for role, items in scores.items():
        out = []
        for i, s in enumerate(items):
            if convention == "llm-edit":
                body = len(s.logp) - 1  # the answer without EOS for MIA and memorisation
                whole, mia = slice(None), slice(0, body)
                es = M.extraction_strength(s.hit[mia])
                zl = M.zlib_score(s.logp[mia], texts[role][i])
                loss = M.loss_score(s.logp[mia])
            else:
                whole, mia = slice(None), slice(0, len(s.logp) - 1)
                es = ou_extraction_strength(s.hit[mia])
                loss = M.loss_score(s.logp[whole])
                zl = loss / len(zlib.compress(texts[role][i].encode("utf-8")))
            out.append({"probability": M.normalised_probability(s.logp[whole]), "avg_loss": -M.mean(s.logp[whole]),
                        "extraction_strength": es, "loss": loss, "zlib": zl,
                        "min_k": M.min_k_score(s.logp[mia], MIA_K),
                        "min_k_plus_plus": M.min_k_plus_plus_score(s.logp[mia], s.mu[mia], s.sigma[mia], MIA_K)})
        rows[role] = out
    return rows


def aggregate(rows: dict, forget_rows: list[dict], convention: str, ref_auc: float) -> dict:
    forget = rows["forget"]
    para, pert = rows["paraphrased"], rows["perturbed"]
    ratios, k = [], 0
    for i, r in enumerate(forget_rows):
        m = len(r["perturbed_answer"])
        wrong = pert[k:k + m]
        k += m
        if convention == "llm-edit":  # M.truth_ratio: the geometric mean of normalised probabilities
            ratios.append(math.exp(-M.mean([w["avg_loss"] for w in wrong]) + para[i]["avg_loss"]))
        else:  # open-unlearning: exp(-mean avg loss) / (exp(-avg loss) + 1e-10)
            ratios.append(math.exp(-M.mean([w["avg_loss"] for w in wrong])) / (math.exp(-para[i]["avg_loss"]) + 1e-10))
    tr_forget = (M.truth_ratio_forget(ratios) if convention == "llm-edit"
                 else M.mean([min(r, 1 / (r + 1e-10)) for r in ratios]))
    attacks = ("loss", "zlib", "min_k", "min_k_plus_plus")
    auc = {a: M.membership_auc([x[a] for x in forget], [x[a] for x in rows["holdout"]]) for a in attacks}
    return {"forget_probability": M.mean([x["probability"] for x in forget]),
            "forget_truth_ratio": tr_forget,
            "extraction_strength": M.mean([x["extraction_strength"] for x in forget]),
            "mia_auc": auc,
            "privleak_vs_ref": {a: M.privleak(auc[a], ref_auc) for a in attacks}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--split", default="forget01", choices=sorted(FORGET_SPLITS))
    ap.add_argument("--tofu-data", default="../shared/data/tofu")
    ap.add_argument("--ou-system-prompt", default=OU_SYSTEM_PROMPT,
                    help="open-unlearning's template system prompt ('' for none: the template's default)")
    ap.add_argument("--ref-auc", type=float, default=0.5,
                    help="reference membership AUC for PrivLeak (open-unlearning's ref_value without retain logs)")
    ap.add_argument("--limit", type=int, default=None, help="first N forget and holdout rows (tests)")
    ap.add_argument("--out", required=True, help="OUT.json and OUT.md are written")
    args = ap.parse_args(argv)
    pct = FORGET_SPLITS[args.split]
    forget_rows = load_split(f"{args.split}_perturbed", args.tofu_data)[: args.limit]
    holdout_rows = load_split(f"holdout{pct:02d}", args.tofu_data)[: args.limit]
    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    ou_system = args.ou_system_prompt or None
    fmt = Formatting()  # llm-edit's: the template's default system prompt, answer + EOS
    wanted = {"forget": [(r["question"], r["answer"]) for r in forget_rows],
              "holdout": [(r["question"], r["answer"]) for r in holdout_rows],
              "paraphrased": [(r["question"], r["paraphrased_answer"]) for r in forget_rows],
              "perturbed": [(r["question"], a) for r in forget_rows for a in r["perturbed_answer"]]}
    pairs = {"llm-edit": {role: [(question_prefix(tok, q, fmt), answer_ids(tok, ForgetItem("qa", q, a)))
                                 for q, a in qa] for role, qa in wanted.items()},
             "open-unlearning": {role: [ou_pair(tok, q, a, ou_system) for q, a in qa] for role, qa in wanted.items()}}
    report = {"model": args.model, "split": args.split, "rows": {k: len(v) for k, v in wanted.items()},
              "ou_system_prompt": ou_system, "ref_auc": args.ref_auc, "mia_k": MIA_K, "conventions": {}, "results": {}}
    for convention, by_role in pairs.items():
        flat = [p for role in by_role for p in by_role[role]]
        scored = iter(score_pairs(model, tok, flat, progress=True, desc=f"scoring ({convention})"))
        scores = {role: [next(scored) for _ in by_role[role]] for role in by_role}
        if convention == "llm-edit":  # zlib reads the answer text itself
            texts = {role: [a for _, a in wanted[role]] for role in wanted}
        else:  # open-unlearning decodes its label tokens, special tokens skipped
            texts = {role: [tok.decode(lab, skip_special_tokens=True) for _, lab in by_role[role]] for role in by_role}
        rows = measure(scores, texts, convention)
        report["results"][convention] = aggregate(rows, forget_rows, convention, args.ref_auc)
        first = by_role["forget"][0]
        report["conventions"][convention] = {
            "first_forget_prompt": tok.decode(first[0]), "first_forget_scored_tokens": tok.convert_ids_to_tokens(first[1])}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    a, b = report["results"]["llm-edit"], report["results"]["open-unlearning"]
    lines = [f"# TOFU {args.split} on `{args.model}`: llm-edit's conventions and open-unlearning's", "",
             f"Rows: {report['rows']}; Min-K k = {MIA_K}; PrivLeak against a reference AUC of {args.ref_auc} "
             "(open-unlearning's formula in both columns).", "",
             "| number | llm-edit | open-unlearning conventions |", "|---|---|---|"]
    for key in ("forget_probability", "forget_truth_ratio", "extraction_strength"):
        lines.append(f"| {key.replace('_', ' ')} | {a[key]:.4f} | {b[key]:.4f} |")
    for attack in a["mia_auc"]:
        lines.append(f"| membership AUC, {attack} | {a['mia_auc'][attack]:.4f} | {b['mia_auc'][attack]:.4f} |")
    for attack in a["privleak_vs_ref"]:
        lines.append(f"| PrivLeak, {attack} | {a['privleak_vs_ref'][attack]:.2f} | {b['privleak_vs_ref'][attack]:.2f} |")
    lines += ["", "Scored tokens of the first forget row:", ""]
    for convention, c in report["conventions"].items():
        lines.append(f"- {convention}: `{' '.join(c['first_forget_scored_tokens'])}`")
    lines += ["", f"Open-unlearning's system prompt here: {ou_system!r}; llm-edit's: the template's default. "
              "Not reproduced: open-unlearning's attention mask hides every pad-id token, which for SmolLM2 "
              "(pad = EOS = <|im_end|>) includes each end-of-turn token.", "", f"{report['seconds']} s."]
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps(report, indent=1))
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
