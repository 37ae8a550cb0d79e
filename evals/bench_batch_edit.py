"""Throughput and memory of one batch edit (MEMIT, AlphaEdit): facts per second, where the time
goes, and the process's peak resident memory.

    python evals/bench_batch_edit.py --limit 100 --methods memit,alphaedit --out evals/results/bench_batch_edit_100.json
    python evals/bench_batch_edit.py --limit 10 --methods memit --set v_steps=1 --out /tmp/rss10.json   # memory only

The first ``--limit`` CounterFact records are edited in one batch on the default model, then
scored (CounterFact's efficacy, generalisation, specificity: the edit must still work) and
reverted (checked bit for bit). Time is split into the context prefixes (generated once per
model), the rest of the preparation (key statistics, read from the cache when present), the
value optimisation and the layer loop (keys, residuals and solves). Run one process per
measurement when comparing peak memory: ``ru_maxrss`` is the whole process's high-water mark.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_edit import edit, load_model, read_requests  # noqa: E402
from llm_edit.core.config import load_config  # noqa: E402
from llm_edit.core.files import run_info, write_json  # noqa: E402
from llm_edit.editing.keys import context_templates  # noqa: E402
from llm_edit.evaluating.metrics import edit_table, summarise  # noqa: E402
from llm_edit.editing.methods import get_method  # noqa: E402
from llm_edit.core.models import model_recipe_name  # noqa: E402
from llm_edit.core.models import fingerprint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class PhaseMemory:
    """The resident memory each phase of an edit peaks at, sampled every 20 ms by a thread: the
    process's high-water mark alone cannot say which phase grows with the batch. Phases are
    named by wrapping the method module's calls of the shared value/layer functions."""

    def __init__(self):
        self.phase, self.peaks, self._stop = "loading", {}, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.wait(0.02):
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * page / 2**20
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), round(rss, 1))

    def wrap(self, module, name: str, phase: str):
        inner = getattr(module, name)

        def wrapped(*args, **kwargs):
            outer, self.phase = self.phase, phase
            try:
                return inner(*args, **kwargs)
            finally:
                self.phase = outer
        setattr(module, name, wrapped)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return dict(self.peaks)


def bench(model, tok, requests, method, sets, memory: PhaseMemory) -> dict:
    base = fingerprint(model)
    sets = list(sets) + [f"batch_size={len(requests)}"]
    config, _ = load_config(get_method(method).config, method, model_recipe=model_recipe_name(model), sets=sets)
    t0 = time.perf_counter()
    context_templates(model, tok, config.context_lengths, config.contexts_per_length, config.seed)
    prefix_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    memory.phase = f"{method}: preparation"
    result = edit(model, tok, requests, method, sets=sets)
    memory.phase = f"{method}: scoring"
    edit_s = time.perf_counter() - t0
    info = result.per_request[0]
    t0 = time.perf_counter()
    after = summarise(edit_table(model, tok, requests))  # the edit still has to work
    eval_s = time.perf_counter() - t0
    result.revert()
    memory.phase = "between methods"
    value_s, solve_s = info["value_seconds_batch"], info["solve_seconds_batch"]
    steps = [r["steps"] for r in result.per_request]
    return {"method": method, "facts": len(requests), "sets": sets, "facts_per_second": round(len(requests) / edit_s, 4),
            "after": after, "eval_seconds": round(eval_s, 1),
            "seconds": {"context_prefixes": round(prefix_s, 1), "edit": round(edit_s, 1),
                        "value_optimisation": value_s, "keys_residuals_solve": solve_s,
                        "preparation_and_rest": round(edit_s - value_s - solve_s, 1)},
            "value_steps": {"mean": round(sum(steps) / len(steps), 2), "max": max(steps)},
            "peak_rss_mib_so_far": round(peak_rss_mib(), 1), "reverts_bit_exact": fingerprint(model) == base,
            "hyperparameters": result.manifest["hyperparameters"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--facts", default=str(ROOT.parent / "shared/data/counterfact/counterfact-edit-1k.json"))
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--methods", default="memit,alphaedit")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    memory = PhaseMemory()
    import llm_edit.editing.methods.alphaedit
    import llm_edit.editing.methods.memit

    for module in (llm_edit.editing.methods.memit, llm_edit.editing.methods.alphaedit):
        memory.wrap(module, "optimise_with", f"{module.__name__.rsplit('.', 1)[1]}: value optimisation")
        memory.wrap(module, "spread_over_layers", f"{module.__name__.rsplit('.', 1)[1]}: keys, residuals, solves")
    model, tok = load_model(args.model)
    memory.phase = "loaded"
    requests = read_requests(args.facts)[: args.limit]
    rss_loaded = peak_rss_mib()
    runs = []
    for method in args.methods.split(","):
        run = bench(model, tok, requests, method, args.sets, memory)
        print(f"{method}: {run['facts_per_second']} facts/s; {run['seconds']}; {run['after']}; "
              f"peak RSS {run['peak_rss_mib_so_far']} MiB")
        runs.append(run)
    phases = memory.stop()
    print("peak RSS by phase (MiB):", phases)
    write_json(Path(args.out), {"runs": runs, "peak_rss_mib": round(peak_rss_mib(), 1),
                                "peak_rss_mib_by_phase": phases,
                                "peak_rss_mib_after_loading": round(rss_loaded, 1), "n_facts": len(requests),
                                "facts_sha256": hashlib.sha256(Path(args.facts).read_bytes()).hexdigest(),
                                "threads": torch.get_num_threads(), "command": " ".join(sys.argv), **run_info()})


if __name__ == "__main__":
    main()
