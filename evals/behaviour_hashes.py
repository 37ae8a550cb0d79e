"""Fingerprints of what llm-edit computes, to show a refactoring changed nothing, bit for bit.

Each line is the sha256 of one output with its volatile fields removed (creation times,
timings, cache paths, versions): the factor tensors and hyper-parameters of a fixed-seed ROME
edit and of a MEMIT batch (on a tiny model and, with ``--real``, on the default model), the
loss log of a fixed-seed NPO run on a tiny model, a TOFU evaluation report of a tiny model and
three causal traces of a tiny model.
Run it before and after a change; the two outputs must be equal.

    python evals/behaviour_hashes.py --real --tofu-data ../shared/data/tofu
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys

import torch

VOLATILE = {"created", "seconds", "prepare_seconds", "timings", "cached", "llm_edit_version", "torch_version",
            "transformers_version", "python", "recipe", "total_s", "statistics"}

EIFFEL = {"prompt": "The {} is located in the city of", "subject": "Eiffel Tower", "target_new": "Rome",
          "target_true": "Paris", "paraphrase_prompts": ["The Eiffel Tower stands in the city of"],
          "neighborhood": [{"prompt": "The Louvre is located in the city of", "target": "Paris"}]}


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in sorted(obj.items()) if k not in VOLATILE}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(part.detach().contiguous().cpu().numpy().tobytes())
        else:
            h.update(json.dumps(_clean(part), sort_keys=True, default=str).encode())
    return h.hexdigest()


def patch_hash(delta) -> str:
    parts = []
    for name in sorted(delta.factors):
        left, right = delta.factors[name]
        parts += [name, left, right]
    return _sha(*parts, delta.manifest.get("hyperparameters"), delta.base_sha256)


def edits(model_name: str, facts, sets) -> dict[str, str]:
    from llm_edit import edit, load_model

    model, tok = load_model(model_name, device="cpu")
    out = {}
    for method, requests in (("rome", facts[:1]), ("memit", facts)):
        result = edit(model, tok, requests, method, sets=sets, progress=False)
        out[f"{method} patch, {model_name}"] = patch_hash(result.delta)
        result.revert()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", action="store_true", help="also edit the default model (statistics cached: minutes)")
    ap.add_argument("--tofu-data", default="../shared/data/tofu")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # one thread: float sums in one order
    from llm_edit import forget, load_model
    from llm_edit.editing.requests import parse_request
    from llm_edit.evaluating.tofu import EvalSettings, evaluate_tofu, make_task

    facts = [parse_request(EIFFEL)] + [parse_request(
        {"prompt": "The {} is located in the city of", "subject": s, "target_new": "Rome", "target_true": t})
        for s, t in (("Louvre", "Paris"), ("Big Ben", "London"), ("Brandenburg Gate", "Berlin"))]
    lines = edits("tiny-llama", facts, ["v_steps=5", "stats_tokens=2000"])
    model, tok = load_model("tiny-llama", device="cpu")
    result = forget(model, tok, [{"prompt": "{} is in", "subject": "Eiffel Tower", "target": "Paris"}],
                    [{"question": "Who wrote Hamlet?", "answer": "Shakespeare."}], "npo", sets=["steps=4"],
                    progress=False)
    lines["npo loss log, tiny-llama"] = _sha(result.log)
    model, tok = load_model("tiny-llama", device="cpu")
    task = make_task("forget01", authors=2, data=args.tofu_data, eval_limit=4)
    report = evaluate_tofu(model, tok, task, EvalSettings(max_new_tokens=8), progress=False, use_cache=False)
    lines["tofu report, tiny-llama"] = _sha(report)
    from llm_edit.locating.trace import trace
    traced = [trace(model, tok, "The Eiffel Tower is located in the city of", "Eiffel Tower", noise=0.5, **kw).to_dict()
              for kw in ({}, {"kinds": ["mlp"], "positions": ["last_subject", "last"], "samples": 3},
                         {"reuse_prefix": False, "kinds": ["hidden"], "samples": 2, "batch_size": 8})]
    lines["causal traces, tiny-llama"] = _sha(traced)
    if args.real:
        lines.update(edits("llama", facts, []))
    for name, digest in lines.items():
        print(f"{digest}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
