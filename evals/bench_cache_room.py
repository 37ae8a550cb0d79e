"""Value optimisation with the prefix caches' room as it was (the grouping budget, 256 MiB) and as
it is (four times it), in one process, one after the other, on the same facts: the time, and
whether every value comes out the same.

    python evals/bench_cache_room.py --out evals/results/bench_cache_room.json

Two workloads, each run in both settings and reverted after each run:
* ``memit-erase`` through ``llm_edit.forget`` (its recipe: ``expand: forms``, lead-ins, batches
  of 8) on the first 8 facts of ``evals/data/forget_tune.jsonl``: one batch;
* ``memit`` with ``--set expand=forms`` through ``llm_edit.edit`` on the first 16 records of
  ``evals/data/counterfact_train_known40.jsonl``: one batch.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llm_edit.editing.values as values  # noqa: E402
from llm_edit import edit, load_model, read_requests  # noqa: E402
from llm_edit.core.files import run_info, write_json  # noqa: E402
from llm_edit.unlearning.forget import forget  # noqa: E402
from llm_edit.unlearning.items import read_items  # noqa: E402

HERE = Path(__file__).resolve().parent
# (the share of the room groups are formed on, the room): before 2026-12-06 and now
SETTINGS = {"before": (1, 2**28), "now": (values._ESTIMATE_SHARE, 2**30)}


def with_room(setting: str):
    """Make every value optimisation of this process use ``setting``'s room and grouping share."""
    share, room = SETTINGS[setting]
    values._ESTIMATE_SHARE = share
    optimise = _ORIGINAL_OPTIMISE

    def optimise_with_room(*args, **kwargs):
        return optimise(*args, **{**kwargs, "prefix_cache_bytes": room})

    values.optimise_values = optimise_with_room


_ORIGINAL_OPTIMISE = values.optimise_values


def erase_run(model, tok, items) -> dict:
    t0 = time.perf_counter()
    result = forget(model, tok, items, method="memit-erase", progress=False)
    seconds = time.perf_counter() - t0
    per = result.manifest["per_request"]
    result.unload()
    return {"seconds": round(seconds, 1), "value_seconds": per[0]["value_seconds_batch"],
            "steps": [r["steps"] for r in per], "delta_norms": [r["delta_norm"] for r in per],
            "losses_after": [r["loss_after_optimisation"] for r in per]}


def memit_run(model, tok, requests) -> dict:
    t0 = time.perf_counter()
    result = edit(model, tok, requests, "memit", sets=["expand=forms"], progress=False)
    seconds = time.perf_counter() - t0
    per = result.per_request
    result.revert()
    return {"seconds": round(seconds, 1), "value_seconds": per[0].get("value_seconds_batch"),
            "steps": [r["steps"] for r in per], "delta_norms": [r["delta_norm"] for r in per],
            "losses_after": [r["loss_after_optimisation"] for r in per]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    model, tok = load_model(args.model)
    workloads = {
        "memit-erase, 8 facts (forget_tune.jsonl)": (erase_run, read_items(HERE / "data/forget_tune.jsonl")[:8]),
        "memit expand=forms, 16 records (counterfact_train_known40.jsonl)":
            (memit_run, read_requests(HERE / "data/counterfact_train_known40.jsonl")[:16]),
    }
    report = {}
    for name, (run, facts) in workloads.items():
        runs = {}
        for setting in SETTINGS:
            with_room(setting)
            runs[setting] = run(model, tok, facts)
            print(f"{name}, {setting}: {runs[setting]['seconds']} s (values {runs[setting]['value_seconds']} s)",
                  flush=True)
        same = all(runs["before"][k] == runs["now"][k] for k in ("steps", "delta_norms", "losses_after"))
        report[name] = {**runs, "same_values": same,
                        "value_seconds_ratio": round(runs["now"]["value_seconds"] / runs["before"]["value_seconds"], 3)}
    write_json(args.out, {"workloads": report, "settings": {k: {"estimate_share": s, "room_bytes": r}
                                                            for k, (s, r) in SETTINGS.items()},
                          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                          "command": " ".join(sys.argv), **run_info()})


if __name__ == "__main__":
    main()
