"""TOFU (Maini et al. 2024): its data, the CPU-sized variant, and the evaluation suite.

TOFU has 200 fictitious authors, 20 question/answer pairs each (``full``, 4,000 rows). A
model is fine-tuned on ``full``; ``forgetXX`` (the last 1/5/10% of the authors) is unlearned;
the *retain model*, fine-tuned on ``retainXX`` only, is the gold standard an unlearned model is
compared with. ``TofuTask`` says which rows play each role:

* full size (``authors=None``): train ``full``, retain ``retainXX``, forget ``forgetXX``,
  evaluated on ``forgetXX_perturbed``, ``retain_perturbed``, ``real_authors_perturbed``,
  ``world_facts_perturbed``; membership inference against ``holdoutXX``;
* CPU-sized (``authors=N``, N ≤ 20): the same roles on the first N authors. The forget set is
  the last k = max(1, round(N × XX%)) of them (``forget_authors`` sets k: forget quality is a
  KS test, and 20 rows against 20 rarely reach significance); every one of the first 20 authors has its
  paraphrased and perturbed answers in ``retain_perturbed`` (rows 0-399 = ``full[:400]``), so
  the truth ratio is defined for both sides; the holdout is the first 20k rows of ``holdout10``
  (authors never trained on). ``eval_limit`` caps the retain, real-author and world-fact rows.

Data comes from ``data_dir`` (or ``$LLM_EDIT_TOFU_DATA``): a folder of the Hugging Face export's
JSON files (the repository's CI reads ``../shared/data/tofu``); without one it is loaded from the
hub (``locuslab/TOFU``).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.files import FactFileError, records
from ..unlearning.items import ForgetItem, Formatting, answer_ids, question_prefix
from . import tofu_metrics as M

HUB_DATASET = "locuslab/TOFU"
FORGET_SPLITS = {"forget01": 1, "forget05": 5, "forget10": 10}
ROWS_PER_AUTHOR = 20
DEFAULT_STOP_STRINGS = ("\nQuestion:", "\nUser:", "<|im_end|>")


class TofuDataError(FileNotFoundError):
    pass


def data_dir(explicit: str | Path | None = None) -> Path | None:
    chosen = explicit or os.environ.get("LLM_EDIT_TOFU_DATA")
    return Path(chosen) if chosen else None


def load_split(name: str, data: str | Path | None = None) -> list[dict]:
    """Rows of one TOFU config (``full``, ``forget10_perturbed``, ...)."""
    folder = data_dir(data)
    if folder is not None:
        path = folder / f"{name}.json"
        if not path.is_file():
            raise TofuDataError(f"{path}: no such TOFU file (the folder must hold the Hugging Face export's "
                                f"<config>.json files)")
        rows = [obj for _, obj in records(path)]
    else:
        try:
            from datasets import load_dataset

            rows = list(load_dataset(HUB_DATASET, name, split="train"))
        except Exception as e:  # offline, or the hub refused
            raise TofuDataError(f"could not load TOFU config {name!r} from the hub ({e}); offline, pass "
                                f"--tofu-data DIR (or set LLM_EDIT_TOFU_DATA) to a folder of its JSON files") from None
    for i, row in enumerate(rows):
        for key in ("question", "answer"):
            if not isinstance(row.get(key), str):
                raise FactFileError(f"TOFU {name}", i + 1, key, "is missing or not a string")
    return rows


def _sha(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


@dataclass
class TofuTask:
    """Which rows play which role (see the module docstring)."""

    split: str
    authors: int | None
    train: list[dict]
    retain_train: list[dict]
    forget_train: list[dict]
    forget_eval: list[dict]
    retain_eval: list[dict]
    holdout: list[dict]
    real_authors: list[dict]
    world_facts: list[dict]
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        roles = ("train", "retain_train", "forget_train", "forget_eval", "retain_eval", "holdout",
                 "real_authors", "world_facts")
        return {"split": self.split, "authors": self.authors, "notes": self.notes,
                "rows": {r: len(getattr(self, r)) for r in roles},
                "sha256": {r: _sha(getattr(self, r)) for r in roles}}

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()[:16]


def make_task(split: str = "forget10", authors: int | None = None, *, data: str | Path | None = None,
              eval_limit: int | None = None, forget_authors: int | None = None, forget_block: int = 0) -> TofuTask:
    """The roles of TOFU's rows. CPU-sized (``authors``): the first N authors; forgotten are the
    last K (``forget_block`` 0, TOFU's own choice of the final authors), or the K before them
    (block 1), and so on: a second forget set on the same fine-tuned model, to report a recipe on
    authors it was not chosen on."""
    if split not in FORGET_SPLITS:
        raise ValueError(f"unknown TOFU split {split!r}: use one of {', '.join(FORGET_SPLITS)}")
    pct = FORGET_SPLITS[split]
    cap = (lambda rows: rows[:eval_limit]) if eval_limit else (lambda rows: rows)
    real, world = cap(load_split("real_authors_perturbed", data)), cap(load_split("world_facts_perturbed", data))
    if authors is None:
        if forget_block:
            raise ValueError("--forget-block needs a CPU-sized TOFU (--authors)")
        return TofuTask(split, None, load_split("full", data), load_split(f"retain{100 - pct:02d}", data),
                        load_split(split, data), load_split(f"{split}_perturbed", data),
                        cap(load_split("retain_perturbed", data)), load_split(f"holdout{pct:02d}", data), real, world)
    if not 2 <= authors <= 20:
        raise ValueError("--authors must be between 2 and 20 (the authors whose perturbed answers TOFU publishes)")
    k = forget_authors if forget_authors is not None else max(1, round(authors * pct / 100))
    if not 1 <= k < authors:
        raise ValueError(f"--forget-authors must be between 1 and {authors - 1} (the others are the retain set)")
    if forget_block < 0 or k * (forget_block + 1) > authors:
        raise ValueError(f"--forget-block must be between 0 and {authors // k - 1} (blocks of {k} authors "
                         f"counted from the last of {authors})")
    lo, hi = (authors - k * (forget_block + 1)) * ROWS_PER_AUTHOR, (authors - k * forget_block) * ROWS_PER_AUTHOR
    full, perturbed = load_split("full", data), load_split("retain_perturbed", data)
    train = full[: authors * ROWS_PER_AUTHOR]
    forget_eval = perturbed[lo:hi]
    for a, b in zip(train[lo:hi], forget_eval):
        if (a["question"], a["answer"]) != (b["question"], b["answer"]):
            raise TofuDataError("full.json and retain_perturbed.json disagree on the first 20 authors' rows")
    if forget_block == 0:  # the wording is part of the cache key of every evaluation made before blocks
        note = (f"CPU-sized TOFU: the first {authors} authors ({len(train)} rows); forget = the last {k} "
                f"author(s) ({len(forget_eval)} rows, {100 * k / authors:.0f}% of the authors; {split} is {pct}% "
                f"of TOFU's 200); holdout = the first {k * ROWS_PER_AUTHOR} rows of holdout10")
    else:
        note = (f"CPU-sized TOFU: the first {authors} authors ({len(train)} rows); forget = authors "
                f"{lo // ROWS_PER_AUTHOR + 1}-{hi // ROWS_PER_AUTHOR} (block {forget_block} of {k} from the end; "
                f"{len(forget_eval)} rows); holdout = the first {k * ROWS_PER_AUTHOR} rows of holdout10")
    return TofuTask(split, authors, train, train[:lo] + train[hi:], train[lo:hi], forget_eval,
                    cap(perturbed[:lo] + perturbed[hi:authors * ROWS_PER_AUTHOR]),
                    load_split("holdout10", data)[: k * ROWS_PER_AUTHOR], real, world, [note])


def items(rows: list[dict]) -> list[ForgetItem]:
    return [ForgetItem("qa", r["question"], r["answer"]) for r in rows]


# -- the evaluation suite ----------------------------------------------------------------------------

@dataclass
class EvalSettings:
    """What a TOFU evaluation depends on besides the model and the data (part of the cache key)."""

    use_chat_template: bool = True
    system_prompt: str | None = None
    max_new_tokens: int = 200
    stop_strings: tuple[str, ...] = DEFAULT_STOP_STRINGS
    batch_size: int = 16
    generation_batch_size: int = 32
    mia_k: float = 0.4

    def key_fields(self) -> dict:  # batch sizes do not change the numbers
        return {k: v for k, v in self.__dict__.items() if "batch" not in k}


def _eval_cache(fp: str, task: TofuTask, settings: EvalSettings, dtype: str, tok) -> Path:
    from ..core.models import cache_home

    fmt = Formatting(settings.use_chat_template, settings.system_prompt).describe(tok)
    key = hashlib.sha256(json.dumps([task.key(), settings.key_fields(), dtype, fmt], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    return cache_home() / "cache" / "eval" / fp[:16] / f"tofu-{task.split}-{key}.json"


def _answer_pairs(tok, roles: dict[str, list[dict]], fmt: Formatting):
    """Every (question, answer) the metrics score, once: the question's prompt ids (shared by its
    answers), the (prompt, answer) id pairs, and each pair's index by (question, answer)."""
    prefix: dict[str, list[int]] = {}
    pairs: list[tuple[list[int], list[int]]] = []
    index: dict[tuple, int] = {}

    def want(question: str, answer: str) -> None:
        if question not in prefix:
            prefix[question] = question_prefix(tok, question, fmt)
        if (question, answer) not in index:
            index[question, answer] = len(pairs)
            pairs.append((prefix[question], answer_ids(tok, ForgetItem("qa", question, answer))))

    for role, rows in roles.items():
        for r in rows:
            want(r["question"], r["answer"])
            if role != "holdout":
                for a in [r.get("paraphrased_answer")] + list(r.get("perturbed_answer") or []):
                    if a:
                        want(r["question"], a)
    return prefix, pairs, index


def _item_row(role: str, r: dict, by_key: dict, generated: dict, settings: EvalSettings, eos) -> dict:
    """One item's metrics from its scored answers and its greedy answer."""
    s = by_key[(r["question"], r["answer"])]
    # the answer without its EOS, for MIA and memorisation (as open-unlearning)
    n = len(s.logp) - 1 if eos is not None and len(s.logp) > 1 else len(s.logp)
    logp, hit, mu, sigma = s.logp[:n], s.hit[:n], s.mu[:n], s.sigma[:n]
    row = {"question": r["question"], "answer": r["answer"], "probability": M.normalised_probability(s.logp)}
    if role in ("forget", "holdout"):
        row["mia"] = {"loss": M.loss_score(logp), "zlib": M.zlib_score(logp, r["answer"]),
                      "min_k": M.min_k_score(logp, settings.mia_k),
                      "min_k_plus_plus": M.min_k_plus_plus_score(logp, mu, sigma, settings.mia_k)}
        row["extraction_strength"] = M.extraction_strength(hit)
        row["exact_memorisation"] = M.exact_memorisation(hit)
    if role != "holdout":
        row["generated"] = generated[(role, r["question"])]
        row["rouge_l_recall"] = M.rouge_l_recall(row["generated"], r["answer"])
        perturbed = [by_key[(r["question"], a)].logp for a in r.get("perturbed_answer") or [] if a]
        true_side = r.get("paraphrased_answer") if role in ("forget", "retain") else r["answer"]
        if perturbed and true_side:
            row["truth_ratio"] = M.truth_ratio(perturbed, by_key[(r["question"], true_side)].logp)
        if role in ("real_authors", "world_facts") and perturbed:
            row["relative_probability"] = M.relative_probability(s.logp, perturbed)
    return row


def evaluate_tofu(model, tok, task: TofuTask, settings: EvalSettings | None = None, *, progress: bool = True,
                  use_cache: bool = True, name: str | None = None) -> dict:
    """Every TOFU metric of one model: per item and aggregated (a JSON-ready report). Forget
    quality and PrivLeak need the retain model's numbers: ``attach_reference`` adds them."""
    from ..core.files import write_json
    from ..core.models import fingerprint
    from ..core.scoring import generate, score_pairs

    settings = settings or EvalSettings()
    fp = fingerprint(model)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    cache = _eval_cache(fp, task, settings, dtype, tok)
    if use_cache and cache.is_file():
        report = json.loads(cache.read_text())
        report["cached"] = str(cache)
        report["conventions"] = M.CONVENTIONS  # a report cached by an older release keeps today's definitions
        if name:
            report["model"] = name
        return report
    t0 = time.perf_counter()
    fmt = Formatting(settings.use_chat_template, settings.system_prompt)
    eos = tok.eos_token_id
    roles = {"forget": task.forget_eval, "retain": task.retain_eval, "real_authors": task.real_authors,
             "world_facts": task.world_facts, "holdout": task.holdout}
    prefix, pairs, index = _answer_pairs(tok, roles, fmt)
    timings = {}
    t = time.perf_counter()
    scores = score_pairs(model, tok, pairs, batch_size=settings.batch_size, progress=progress,
                         desc="TOFU: scoring answers")
    timings["scoring_s"] = round(time.perf_counter() - t, 2)
    timings["pairs_scored"] = len(pairs)
    timings["tokens_scored"] = sum(len(p) + len(a) for p, a in pairs)  # as whole sequences
    timings["tokens_run"] = sum(len(p) for p in prefix.values()) + sum(len(a) for _, a in pairs)  # prompts shared
    by_key = {k: scores[i] for k, i in index.items()}
    gen_rows = [(role, r) for role in ("forget", "retain", "real_authors", "world_facts") for r in roles[role]]
    t = time.perf_counter()
    answers = generate(model, tok, [prefix[r["question"]] for _, r in gen_rows],
                       max_new_tokens=settings.max_new_tokens, stop_strings=settings.stop_strings,
                       batch_size=settings.generation_batch_size, progress=progress, desc="TOFU: greedy answers")
    timings["generation_s"] = round(time.perf_counter() - t, 2)
    timings["answers_generated"] = len(answers)
    timings["answer_tokens_generated"] = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers)
    t = time.perf_counter()
    generated = {(role, r["question"]): a for (role, r), a in zip(gen_rows, answers)}

    splits = {role: [_item_row(role, r, by_key, generated, settings, eos) for r in rows] for role, rows in roles.items()}
    report = {"model": name or getattr(model, "name_or_path", None), "model_fingerprint": fp, "dtype": dtype,
              "task": task.describe(), "settings": {**settings.__dict__, "stop_strings": list(settings.stop_strings)},
              "formatting": fmt.describe(tok), "conventions": M.CONVENTIONS, "items": splits,
              "aggregates": aggregate(splits), "reference": None, "timings": timings}
    report["timings"]["metrics_s"] = round(time.perf_counter() - t, 2)
    report["timings"]["total_s"] = round(time.perf_counter() - t0, 2)
    report["aggregates"].update(_reference_state(None))
    if use_cache:
        write_json(cache, report)
    return report


def aggregate(splits: dict) -> dict:
    """The headline numbers from per-item values (TOFU Table 1's columns, MUSE's PrivLeak inputs)."""
    def col(role, key):
        return [r[key] for r in splits[role] if key in r]

    agg = {}
    forget_tr = col("forget", "truth_ratio")
    agg["forget_probability"] = M.mean(col("forget", "probability"))
    agg["forget_rouge"] = M.mean(col("forget", "rouge_l_recall"))
    agg["forget_truth_ratio"] = M.truth_ratio_forget(forget_tr) if forget_tr else None
    agg["extraction_strength"] = M.mean(col("forget", "extraction_strength"))
    agg["exact_memorisation"] = M.mean(col("forget", "exact_memorisation"))
    utility = {}
    for role in ("retain", "real_authors", "world_facts"):
        if not splits[role]:
            continue
        prob_key = "probability" if role == "retain" else "relative_probability"
        utility[f"{role}_probability"] = M.mean(col(role, prob_key))
        utility[f"{role}_rouge"] = M.mean(col(role, "rouge_l_recall"))
        utility[f"{role}_truth_ratio"] = M.truth_ratio_true_better(col(role, "truth_ratio"))
    agg.update(utility)
    agg["model_utility"] = M.harmonic_mean(list(utility.values())) if len(utility) == 9 else None
    agg["mia_auc"] = {attack: M.membership_auc([r["mia"][attack] for r in splits["forget"]],
                                               [r["mia"][attack] for r in splits["holdout"]])
                      for attack in ("loss", "zlib", "min_k", "min_k_plus_plus")} if splits["holdout"] else None
    return agg


def _reference_state(retain_report: dict | None, source: str | None = None) -> dict:
    if retain_report is None:
        missing = {"value": None, "status": "missing: no retain reference was given (--retain-ref). Forget quality "
                   "compares this model's forget truth ratios with those of a model fine-tuned without the forget "
                   "set; PrivLeak compares membership AUCs with it. Evaluate that model, or run `llm-edit tofu`."}
        return {"forget_quality": dict(missing), "privleak": dict(missing)}
    return {}


def privleak_record(aucs: dict[str, float], ref: dict[str, float]) -> dict:
    """PrivLeak of every attack against the retain model's AUCs; the headline is open-unlearning's
    (Min-K%), Min-K%++ beside it."""
    per_attack = {a: M.privleak(aucs[a], ref[a]) for a in ref}
    return {"value": per_attack["min_k"], "status": "ok", "attack": "min_k",
            "min_k_plus_plus": per_attack["min_k_plus_plus"], "per_attack": per_attack,
            "definition": M.CONVENTIONS["privleak"]}


def attach_reference(report: dict, retain_report: dict, source: str) -> dict:
    """Forget quality (KS p-value of forget truth ratios) and PrivLeak (per MIA attack) against the
    retain model's report of the same task and settings."""
    if retain_report["task"]["sha256"]["forget_eval"] != report["task"]["sha256"]["forget_eval"]:
        raise ValueError(f"{source}: the retain reference was evaluated on other forget rows (another split, "
                         f"--authors or data); evaluate the retain model on this task")
    mine = [r["truth_ratio"] for r in report["items"]["forget"] if "truth_ratio" in r]
    theirs = [r["truth_ratio"] for r in retain_report["items"]["forget"] if "truth_ratio" in r]
    agg = report["aggregates"]
    agg["forget_quality"] = {"value": M.forget_quality(mine, theirs), "status": "ok",
                             "retain_forget_truth_ratio": retain_report["aggregates"]["forget_truth_ratio"]}
    if agg.get("mia_auc") and retain_report["aggregates"].get("mia_auc"):
        ref = retain_report["aggregates"]["mia_auc"]
        agg["privleak"] = privleak_record(agg["mia_auc"], ref)
    report["reference"] = {"source": source, "model": retain_report.get("model"),
                           "model_fingerprint": retain_report.get("model_fingerprint")}
    return report


def read_reference(path: str | Path) -> dict:
    """A retain reference given as a report.json (or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FactFileError(str(path), None, None, f"is not a readable TOFU report ({e})") from None
    if not isinstance(report, dict) or "items" not in report or "forget" not in report.get("items", {}):
        raise FactFileError(str(path), None, "items", "is not a TOFU report (llm-edit eval --suite tofu)")
    return report
