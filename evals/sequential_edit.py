"""Sequential editing: ROME, MEMIT and AlphaEdit fed the same facts batch after batch, measured
after every batch (CounterFact's efficacy, generalisation, specificity on every fact edited so
far, and perplexity on a fixed generic text as a collapse detector).

    python evals/sequential_edit.py --limit 1000 --batch-size 100          # the issue's setting (GPU)
    python evals/sequential_edit.py --limit 40 --batch-size 10 --out evals/results/sequential_40
    python evals/sequential_edit.py --limit 1000 --batch-size 100 --resume # go on after an interruption
    python evals/sequential_edit.py --limit 1000 --batch-size 100 --resume --rerun alphaedit  # new recipe
    python evals/sequential_edit.py --facts F --skip 500 --limit 500 --methods alphaedit  # records 500-999

Each method starts from the original weights (the previous method's edits are reverted, bit for
bit, and checked). MEMIT and AlphaEdit take each batch as one batch edit; ROME edits the facts
of a batch one after another (it has no batch form). AlphaEdit carries its memory of earlier
keys from batch to batch. Each method edits through an editing session (``llm_edit.editing.session``, in
OUT.sessions/METHOD) saved batch by batch, so ``--resume`` continues an interrupted run. Writes
OUT.json (every measurement, the hyper-parameters, timings split into value optimisation and
solve, peak memory, data hash) after every batch, and OUT.png (efficacy, generalisation,
specificity and perplexity against the number of edits).

``--generation-sample N`` also judges the edits by what the model says (``evaluating/edit_forms``:
the greedy answer to the prompt, a chat turn, the question and the prompt in context; the new
object named and the old one not) on N records spread evenly over all batches, once before any
edit and once after the last batch: whether the early edits still hold, by generation, after
all the later ones. It is a sample because generation is the slow part: four forms of 1,000
records take longer than the editing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_edit import load_model, read_requests  # noqa: E402
from llm_edit.core.files import run_info, write_json  # noqa: E402
from llm_edit.evaluating.edit_forms import FORMS, generation_answers, generation_scores  # noqa: E402
from llm_edit.evaluating.metrics import edit_table, generic_perplexity, summarise  # noqa: E402
from llm_edit.core.models import fingerprint  # noqa: E402
from llm_edit.editing.session import EditSession  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def measure(model, tok, requests) -> dict:
    t0 = time.perf_counter()
    scores = summarise(edit_table(model, tok, requests))
    return dict(scores, perplexity=generic_perplexity(model, tok), eval_seconds=round(time.perf_counter() - t0, 2))


def spread_sample(n_records: int, n: int) -> list[int]:
    """``n`` record indices spread evenly from the first to the last (all of them if n ≥ the count)."""
    if n >= n_records:
        return list(range(n_records))
    if n == 1:
        return [0]
    return sorted({round(i * (n_records - 1) / (n - 1)) for i in range(n)})


class GenerationSample:
    """The records judged by generation, with the original model's answers (taken once)."""

    def __init__(self, model, tok, requests, n: int):
        self.indices = spread_sample(len(requests), n)
        self.requests = [requests[i] for i in self.indices]
        self.before = generation_answers(model, tok, self.requests, progress=True)

    def measure(self, model, tok) -> dict:
        t0 = time.perf_counter()
        scores = generation_scores(generation_answers(model, tok, self.requests, progress=True), self.before)
        return {"records": self.indices, **{k: v for k, v in scores.items() if not k.startswith("portability")},
                "eval_seconds": round(time.perf_counter() - t0, 2)}


def run_method(model, tok, method, requests, batch_size, sets, session_dir: Path, resume_from: dict | None = None,
               on_point=lambda run: None, generation: GenerationSample | None = None) -> dict:
    """Edit ``requests`` batch after batch in an editing session kept in ``session_dir``, measuring
    after each batch; ``on_point`` gets the run so far (``"complete": False``) after every
    measurement, so an interrupted run still leaves a curve.

    With ``resume_from`` (that unfinished run, read back from the report) the session is opened
    instead of created: its batches are applied again, AlphaEdit's memory is rebuilt from their
    keys, and editing goes on after the last measured batch. A batch that landed in the session
    but was not measured before the interruption is undone and made again."""
    base = fingerprint(model)
    timing = {"edit_seconds": 0.0, "value_seconds": 0.0, "solve_seconds": 0.0}
    if resume_from is not None:
        session = EditSession.open(session_dir, model, tok)
        curve = list(resume_from["curve"])
        timing.update(resume_from["timing"])
        while session.facts > curve[-1]["edits"]:
            session.undo()
        if session.facts != curve[-1]["edits"]:
            session.revert_all()
            raise SystemExit(f"{session_dir}: the session holds {session.facts} facts but the report measured "
                             f"{curve[-1]['edits']}; start this method again without --resume")
        hyperparameters, recipe = resume_from["hyperparameters"], resume_from["recipe"]
        print(f"{method}: resuming after {session.facts} edits", flush=True)
    else:
        if session_dir.exists():
            shutil.rmtree(session_dir)
        session = EditSession.create(session_dir, model, method, sets=sets,
                                     batch_size=batch_size if method != "rome" else None)
        curve = [dict(measure(model, tok, requests[:batch_size]), edits=0)]
        hyperparameters = recipe = None

    def summary(complete: bool) -> dict:
        edited = curve[-1]["edits"]
        return {"method": method, "complete": complete, "curve": curve, "session": str(session_dir),
                "hyperparameters": hyperparameters, "recipe": recipe,
                "timing": {k: round(v, 1) for k, v in timing.items()},
                "facts_per_second": round(edited / timing["edit_seconds"], 4) if edited else None,
                "perplexity_increase": round(curve[-1]["perplexity"] / curve[0]["perplexity"] - 1, 4)}

    try:
        for start in range(session.facts, len(requests), batch_size):
            batch = requests[start:start + batch_size]
            t0 = time.perf_counter()
            # statistics, projectors and prefixes stay the original model's (prepared once)
            result = session.edit(tok, batch, progress=False)
            timing["edit_seconds"] += time.perf_counter() - t0
            hyperparameters, recipe = result.manifest["hyperparameters"], result.manifest["recipe"]
            for info in result.per_request[:1] if method != "rome" else result.per_request:
                timing["value_seconds"] += info.get("value_seconds_batch", info.get("value_seconds", 0.0))
                timing["solve_seconds"] += info.get("solve_seconds_batch", info.get("solve_seconds", 0.0))
            edited = requests[:start + len(batch)]
            point = dict(measure(model, tok, edited), edits=len(edited))
            curve.append(point)
            print(f"{method}: {len(edited)} edits, efficacy {point['efficacy']:.3f}, generalisation "
                  f"{point['generalisation']:.3f}, specificity {point['specificity']:.3f}, "
                  f"perplexity {point['perplexity']:.2f}", flush=True)
            on_point(summary(complete=False))
        by_generation = generation.measure(model, tok) if generation is not None else None
    finally:
        session.revert_all()
    assert fingerprint(model) == base, "reverting the edits did not restore the original weights"
    done = dict(summary(complete=True), reverts_bit_exact=True)
    if by_generation is not None:
        done["generation_after_last_batch"] = by_generation
        print(f"{method}: by generation after {curve[-1]['edits']} edits, on {len(generation.indices)} records: "
              + ", ".join(f"{form} {by_generation[f'gen_{form}']:.3f} ({by_generation[f'gen_{form}_n']})"
                          for form in FORMS if by_generation.get(f"gen_{form}") is not None), flush=True)
    return done


def plot(runs, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("efficacy", "efficacy ↑"), ("generalisation", "generalisation ↑"),
              ("specificity", "specificity ↑"), ("perplexity", "perplexity on generic text ↓")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, (key, label) in zip(axes, panels):
        for run in runs:
            xs = [p["edits"] for p in run["curve"]]
            ax.plot(xs, [p[key] for p in run["curve"]], marker="o", ms=3, label=run["method"] + ("" if run.get("complete", True) else " (unfinished)"))
        ax.set_title(label)
        ax.set_xlabel("facts edited")
        if key != "perplexity":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def earlier_runs(path: Path, args, facts_sha: str) -> dict:
    """The runs of an earlier report, by method, after checking it measured the same thing."""
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    for key, value in (("model", args.model), ("facts_sha256", facts_sha), ("batch_size", args.batch_size)):
        if report.get(key) != value:
            raise SystemExit(f"{path}: cannot resume: its {key} is {report.get(key)!r}, this run's is {value!r}")
    measured_by = {"command": report.get("command"), "created": report.get("created")}
    return {run["method"]: dict(run, measured_by=run.get("measured_by", measured_by)) for run in report["runs"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama")
    ap.add_argument("--facts", default=str(ROOT.parent / "shared/data/counterfact/counterfact-edit-1k.json"))
    ap.add_argument("--limit", type=int, default=1000, help="the first N records (after --skip)")
    ap.add_argument("--skip", type=int, default=0,
                    help="leave out the first N records (a later slice no choice has seen)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--methods", default="alphaedit,memit,rome")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE for every method")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=str(ROOT / "evals/results/sequential_edit"))
    ap.add_argument("--sessions", default=None,
                    help="directory for the editing sessions, one per method (default: OUT.sessions)")
    ap.add_argument("--resume", action="store_true",
                    help="go on from OUT.json: finished methods are kept, an unfinished one continues from its session")
    ap.add_argument("--rerun", default="",
                    help="with --resume: run these methods again from scratch (a new recipe, say); every other "
                         "run of the report is kept as it is, finished or not")
    ap.add_argument("--generation-sample", type=int, default=0, metavar="N",
                    help="also judge N records, spread over all batches, by generation before any edit and "
                         "after the last batch (default 0: off)")
    args = ap.parse_args()
    methods, rerun = args.methods.split(","), set(filter(None, args.rerun.split(",")))
    if rerun and not args.resume:
        ap.error("--rerun goes with --resume (without it every method runs from scratch anyway)")
    if rerun - set(methods):
        ap.error(f"--rerun {args.rerun}: not among --methods {args.methods}")
    if args.generation_sample < 0:
        ap.error(f"--generation-sample {args.generation_sample}: must be 0 (off) or a number of records")

    if args.skip < 0:
        ap.error(f"--skip {args.skip}: must be >= 0")
    requests = read_requests(args.facts, limit=args.skip + args.limit)[args.skip:]
    if not requests:
        ap.error(f"--skip {args.skip}: {args.facts} has no records after the first {args.skip}")
    facts_sha = hashlib.sha256("".join(json.dumps(r.to_dict(), sort_keys=True) for r in requests).encode()).hexdigest()
    out = Path(args.out)
    sessions = Path(args.sessions) if args.sessions else out.with_suffix(".sessions")
    earlier = earlier_runs(out.with_suffix(".json"), args, facts_sha) if args.resume else {}
    model, tok = load_model(args.model, device=args.device)
    generation = GenerationSample(model, tok, requests, args.generation_sample) if args.generation_sample else None
    runs = []
    t0 = time.perf_counter()
    title = f"{args.model}: {len(requests)} CounterFact edits in batches of {args.batch_size}"

    def write(runs_now) -> None:
        report = {"model": args.model, "facts": args.facts, "facts_sha256": facts_sha, "skip": args.skip,
                  "limit": args.limit, "batch_size": args.batch_size, "runs": runs_now,
                  "seconds": round(time.perf_counter() - t0, 1),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "command": " ".join(sys.argv), **run_info()}
        write_json(out.with_suffix(".json"), report)
        plot(runs_now, out.with_suffix(".png"), title)

    for i, method in enumerate(methods):
        # the report's runs of the methods still to come stay in every write, so an interruption
        # never drops a run that was measured before
        later = [earlier[m] for m in methods[i + 1:] if m in earlier]
        before = None if method in rerun else earlier.get(method)
        if before is not None and (before.get("complete") or rerun):
            state = "" if before.get("complete") else ", unfinished"
            print(f"{method}: kept from {out.with_suffix('.json')} ({before['curve'][-1]['edits']} edits{state})")
            runs.append(before)
            continue
        runs.append(run_method(model, tok, method, requests, args.batch_size, args.sets, sessions / method,
                               resume_from=before, on_point=lambda partial: write(runs + [partial] + later),
                               generation=generation))
        write(runs + later)
    for run in runs:
        last = run["curve"][-1]
        print(f"{run['method']:<10} efficacy {last['efficacy']:.3f}  generalisation {last['generalisation']:.3f}  "
              f"specificity {last['specificity']:.3f}  perplexity {run['curve'][0]['perplexity']:.2f} -> "
              f"{last['perplexity']:.2f} ({run['perplexity_increase']:+.1%})  {run['facts_per_second']} facts/s")


if __name__ == "__main__":
    main()
