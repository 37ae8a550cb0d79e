"""Does forgetting hold? One forget run judged the way issue 20 asks: every audit question probe,
neighbour facts, unrelated facts and perplexity, before and after; optionally the whole audit.

    python evals/forget_holds.py --facts evals/data/forget_dev.jsonl \
        --neighbours evals/data/neighbours_dev.jsonl --unrelated evals/data/unrelated_dev.jsonl \
        --method npo [--set expand=forms ...] [--retain FILE] [--attacks] --out evals/results/holds/dev_npo

Without ``--method`` and ``--set`` it runs ``llm-edit forget``'s defaults (through
``llm_edit.forget``, the same code): that is the configuration the README reports.

* question probes: the audit's (``auditing/probes.py``), greedy answers of up to 48 tokens; a
  fact counts as answered when its object appears anywhere in the answer (``mentions``);
  verdicts by the audit's thresholds (recovery ≤ 0.25 forgotten) against the original;
* neighbours (``--neighbours``): facts the model knows that share a forgotten fact's object or
  relation, never trained on (drawn from the evaluation half of the known facts); answered =
  the object anywhere in a 16-token greedy continuation;
* unrelated (``--unrelated``): the same criterion;
* subject facts (``--subject-facts``, optional): other facts about the forgotten subjects (another
  relation, another object: Sukarno's country when his religion is forgotten); the same
  criterion. A forgetting that erases who the subject is, not the one fact, loses them;
* perplexity on ``llm_edit/data/generic_text.txt``;
* ``--attacks``: the full audit (relearning, Q8_0/Q4_0 quantization, membership, utility guard).

Any overlap between what was trained (forget forms, protective retain facts) and what judges
(neighbours, unrelated) is reported in ``leaks``. The plain figures count when it is empty;
when it is not, ``neighbours_kept_untrained`` (and ``unrelated_...``) count only the facts that
were neither trained on nor protected, and those are the figures to quote. ``--rescore RUN``
adds those to an earlier run's holds.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from llm_edit import forget, load_model  # noqa: E402
from llm_edit.auditing.audit import AuditConfig, audit, write_audit  # noqa: E402
from llm_edit.auditing.probes import probe_verdicts, run_probes, verdict_line  # noqa: E402
from llm_edit.core.files import atomic_directory, write_json  # noqa: E402
from llm_edit.core.scoring import generate  # noqa: E402
from llm_edit.core.text import mentions  # noqa: E402
from llm_edit.evaluating.metrics import generic_perplexity  # noqa: E402
from llm_edit.unlearning.items import Formatting, items_sha256, read_items  # noqa: E402


def answered(model, tok, items) -> list[dict]:
    texts = generate(model, tok, [list(tok(x.prompt)["input_ids"]) for x in items], max_new_tokens=16)
    return [{"prompt": x.prompt, "object": x.answer, "greedy": t, "answered": mentions(t, x.answer)}
            for x, t in zip(items, texts)]


def measure(model, tok, forget_items, neighbours, unrelated, config, subject_facts=()) -> dict:
    probes = run_probes(model, tok, forget_items, unrelated[:config.icl_examples], Formatting(), config)
    return {"probes": probes, "neighbours": answered(model, tok, neighbours),
            "unrelated": answered(model, tok, unrelated), "perplexity": generic_perplexity(model, tok),
            **({"subject_facts": answered(model, tok, subject_facts)} if subject_facts else {})}


def check_subject_facts(path: str, facts, forget_items) -> None:
    """Each subject fact must be about a forgotten subject and say something else than the forgotten
    object; raises ``ValueError`` naming the file and line."""
    forgotten = {}
    for x in forget_items:
        forgotten.setdefault(x.extra.get("subject", "").lower(), set()).add(x.answer.lower())
    for line, x in enumerate(facts, 1):
        subject = x.extra.get("subject", "").lower()
        if subject not in forgotten:
            raise ValueError(f"{path}:{line}: subject {x.extra.get('subject')!r} is not a forgotten subject")
        if x.answer.lower() in forgotten[subject]:
            raise ValueError(f"{path}:{line}: target {x.answer!r} is the forgotten object itself")


def share(rows: list[dict]) -> float:
    return sum(r["answered"] for r in rows) / len(rows) if rows else float("nan")


def kept(before: list[dict], after: list[dict]) -> tuple[int, int]:
    """(still answered, answered before)"""
    known = [i for i, r in enumerate(before) if r["answered"]]
    return sum(after[i]["answered"] for i in known), len(known)


def kept_untrained(before: list[dict], after: list[dict], items, trained: set[str]) -> tuple[int, int]:
    """``kept`` over the judged facts whose subject was not trained on or protected (``items``:
    the neighbour or unrelated facts, in the rows' order): the figure that still counts when
    ``leaks`` is not empty."""
    rows = [i for i, x in enumerate(items)
            if x.extra.get("subject", "").lower() not in trained and x.prompt.lower() not in trained]
    return kept([before[i] for i in rows], [after[i] for i in rows])


def trained_subjects(manifest: dict) -> set[str]:
    """Subjects (and derived prompts) the forget run trained on or protected, lower-cased."""
    trained = {x["prompt"].lower() for x in manifest.get("derived_forms", [])}
    trained |= {s.lower() for s in manifest.get("known_key_subjects", [])}  # memit's known_key_weight
    return trained | {x["extra"].get("subject", "").lower() for x in manifest.get("protective_retain", [])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--facts", help="the forget file (not needed with --rescore)")
    ap.add_argument("--neighbours", required=True)
    ap.add_argument("--unrelated", required=True)
    ap.add_argument("--subject-facts", help="other facts about the forgotten subjects (optional; see above)")
    ap.add_argument("--retain", help="a retain file (default: none, as llm-edit forget without --retain)")
    ap.add_argument("--method", help="default: llm-edit forget's default")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--attacks", action="store_true", help="also run the full audit (relearning, quantization)")
    ap.add_argument("--out", help="folder for holds.json (and the audit's files)")
    ap.add_argument("--rescore", help="an earlier run's folder: add the untrained-only figures to its holds.json "
                    "(--neighbours and --unrelated must be the files it ran with)")
    ap.add_argument("--trained-from", help="with --rescore: exclude what this other run trained on or protected "
                    "(to compare two runs on the same facts)")
    args = ap.parse_args()
    if args.rescore:
        return rescore(Path(args.rescore), read_items(args.neighbours), read_items(args.unrelated),
                       Path(args.trained_from) if args.trained_from else None)
    if not args.out or not args.facts:
        ap.error("--facts and --out are required (unless --rescore)")
    forget_items, neighbours, unrelated = read_items(args.facts), read_items(args.neighbours), read_items(args.unrelated)
    subject_facts = read_items(args.subject_facts) if args.subject_facts else []
    try:  # before any model loads: exit status 2, nothing written
        check_subject_facts(args.subject_facts, subject_facts, forget_items)
    except ValueError as e:
        ap.error(str(e))
    config = AuditConfig()
    original, tok = load_model(args.model)
    model, _ = load_model(args.model)
    before = measure(original, tok, forget_items, neighbours, unrelated, config, subject_facts)
    kwargs = {"method": args.method} if args.method else {}
    t0 = time.perf_counter()
    result = forget(model, tok, forget_items, args.retain, sets=args.sets, **kwargs)
    seconds = time.perf_counter() - t0
    unlearned = result.merge()
    after = measure(unlearned, tok, forget_items, neighbours, unrelated, config, subject_facts)
    trained = trained_subjects(result.manifest)
    judged = {x.extra.get("subject", "").lower() for x in neighbours + unrelated} | {x.prompt.lower() for x in
                                                                                   neighbours + unrelated}
    verdicts = probe_verdicts(after["probes"], before["probes"], config)
    n_kept, n_known = kept(before["neighbours"], after["neighbours"])
    u_kept, u_known = kept(before["unrelated"], after["unrelated"])
    summary = {
        "method": result.manifest["method"], "sets": args.sets, "retain": args.retain,
        "verdict_line": verdict_line(verdicts),
        "probes": {p: {k: v[k] for k in ("original", "unlearned", "verdict")} for p, v in verdicts.items()},
        "neighbours_kept": n_kept / n_known if n_known else None, "neighbours_known_before": n_known,
        "unrelated_kept": u_kept / u_known if u_known else None, "unrelated_known_before": u_known,
        "perplexity_before": before["perplexity"], "perplexity_after": after["perplexity"],
        "perplexity_rise": after["perplexity"] / before["perplexity"] - 1,
        "forget_seconds": round(seconds, 1), "derived_forms": len(result.manifest.get("derived_forms", [])),
        "protective_retain": len(result.manifest.get("protective_retain", [])),
        "leaks": sorted(trained & judged),
    }
    if subject_facts:
        s_kept, s_known = kept(before["subject_facts"], after["subject_facts"])
        summary["subject_facts_kept"] = s_kept / s_known if s_known else None
        summary["subject_facts_known_before"] = s_known
    if summary["leaks"]:
        for name, items in (("neighbours", neighbours), ("unrelated", unrelated)):
            k, n = kept_untrained(before[name], after[name], items, trained)
            summary[f"{name}_kept_untrained"], summary[f"{name}_untrained_known_before"] = (k / n if n else None), n
    report = {"command": " ".join(sys.argv), "summary": summary, "before": before, "after": after,
              "data_sha256": {name: items_sha256(items) for name, items in
                              (("facts", forget_items), ("neighbours", neighbours), ("unrelated", unrelated),
                               ("subject_facts", subject_facts)) if items},
              "manifest": {k: v for k, v in result.manifest.items() if k != "log"}}
    with atomic_directory(Path(args.out), overwrite=True) as out:
        if args.attacks:
            t1 = time.perf_counter()
            full = audit(unlearned, original, tok, forget_items, retain_items=unrelated, config=config)
            report["audit_seconds"] = round(time.perf_counter() - t1, 1)
            summary["audit_verdict"] = full["verdict"]
            summary["attacks"] = {t["probe"]: {"value": t["unlearned"], "recovery": t["recovery"],
                                               "verdict": t["verdict"]} for t in full["table"]
                                  if t["probe"].startswith(("relearn", "quantized"))}
            write_audit(out, full, f"Audit: {summary['method']} {' '.join(args.sets)}")
        write_json(out / "holds.json", report)
    print(json.dumps(summary, indent=1))


def rescore(run: Path, neighbours, unrelated, trained_from: Path | None = None) -> None:
    report = json.loads((run / "holds.json").read_text())
    for name, items in (("neighbours", neighbours), ("unrelated", unrelated)):
        if report["data_sha256"][name] != items_sha256(items):
            sys.exit(f"{run}: it did not run with this {name} file (sha256 differs)")
    summary = report["summary"]
    trained = trained_subjects(report["manifest"])
    if trained_from is not None:
        trained |= trained_subjects(json.loads((trained_from / "holds.json").read_text())["manifest"])
        summary["untrained_excludes_also"] = str(trained_from)
    for name, items in (("neighbours", neighbours), ("unrelated", unrelated)):
        k, n = kept_untrained(report["before"][name], report["after"][name], items, trained)
        summary[f"{name}_kept_untrained"], summary[f"{name}_untrained_known_before"] = (k / n if n else None), n
    write_json(run / "holds.json", report)
    print(json.dumps({k: v for k, v in summary.items() if "untrained" in k or k == "leaks"}, indent=1))


if __name__ == "__main__":
    main()
