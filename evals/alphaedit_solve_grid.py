"""AlphaEdit's solve compared on fixed values: which ridge α, null-space threshold and memory
weight keep sequential edits without costing the model elsewhere.

    python evals/alphaedit_solve_grid.py --batches 3 --grid alpha=30,15 --grid memory_weight=1,10

The value optimisation is 90% of an AlphaEdit batch and does not depend on the solve, so the
values (the target states z_i at the top edited layer) of ``--batches`` batches (after the
first ``--skip`` records) are optimised once, with the recipe's settings (and ``--set``
overrides), and cached. Every setting of the grid then replays the batches in order: keys and residuals measured on the model as the
earlier batches left it, the update solved with that setting, the batch's keys added to the
memory; after each batch the efficacy, generalisation and specificity of every batch so far
(each batch on its own, so decay shows) and perplexity on the generic text.

Approximation: all the batches' values are optimised on the original model, where a true
sequential run optimises batch b's values on the model after batches 1..b-1 (evals/
sequential_edit.py does that). The difference is what batch b's subjects' states moved under
the earlier edits; use this script to rank settings, sequential_edit.py to measure one.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_edit import load_model, read_requests  # noqa: E402
from llm_edit.editing.edit import add_gram  # noqa: E402
from llm_edit.core.models import model_recipe_name  # noqa: E402
from llm_edit.core.arch import arch_of  # noqa: E402
from llm_edit.core.config import load_config, parse_set  # noqa: E402
from llm_edit.core.files import run_info, write_json  # noqa: E402
from llm_edit.editing.keys import spread_over_layers  # noqa: E402
from llm_edit.editing.values import optimise_values  # noqa: E402
from llm_edit.editing.rank_one import null_space_projector, null_space_update  # noqa: E402
from llm_edit.editing.methods.alphaedit import NULLSPACE_SCALES, AlphaEditConfig, null_space_cutoff, prepare  # noqa: E402
from llm_edit.evaluating.metrics import edit_table, generic_perplexity, summarise  # noqa: E402
from llm_edit.core.models import cache_home, fingerprint  # noqa: E402
from llm_edit.core.patch import WeightDelta  # noqa: E402
from llm_edit.editing.stats import second_moment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# memory_weight: w·K_pK_pᵀ (the paper: w = 1); first_layer: the range first_layer..top (the recipe's top
# layer, where the cached values live) that the residual is spread over
SOLVE_KEYS = ("alpha", "nullspace_threshold", "memory_weight", "first_layer")


def value_cache_key(base: str, facts, skip: int, batch_size: int, sets: list[str], config) -> str:
    """Where a grid's values are cached: they depend on the model, the records and every setting
    but the solve's."""
    return hashlib.sha256(json.dumps([base, str(facts), skip, batch_size, sets,
                                      {k: getattr(config, k) for k in config.__dataclass_fields__ if k not in SOLVE_KEYS}],
                                     sort_keys=True, default=str).encode()).hexdigest()[:16]


def batch_values(model, tok, config, state, batch, cache: Path) -> torch.Tensor:
    """The batch's target states z_i = h_i + δ_i at the top layer, optimised once and cached."""
    if cache.exists():
        return torch.load(cache, weights_only=True)
    spec = arch_of(model)
    values = optimise_values(model, tok, spec.layer(state.layers[-1]), batch, state.contexts,
                             steps=config.v_steps, lr=config.v_lr, kl_factor=config.kl_factor,
                             weight_decay=config.v_weight_decay, clamp_norm_factor=config.clamp_norm_factor,
                             kl_prompts=config.kl_prompts, nll_stop=config.nll_stop, progress=True)
    targets = torch.stack([v.initial + v.delta for v in values])
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(targets, cache)
    return targets


def replay(model, tok, config, state, batches, targets, setting, projectors_by_threshold) -> list[dict]:
    """Apply the batches in order with one solve setting; measure after each; revert."""
    spec = arch_of(model)
    alpha = setting.get("alpha", config.alpha)
    weight = setting.get("memory_weight", 1.0)
    projectors = projectors_by_threshold[setting.get("nullspace_threshold", config.nullspace_threshold)]
    layers = list(range(int(setting.get("first_layer", state.layers[0])), state.layers[-1] + 1))
    memory, applied, curve = {}, [], []
    try:
        for b, (batch, z) in enumerate(zip(batches, targets)):
            def solve(layer, residuals, keys):
                previous = memory.get(spec.mlp_out.format(layer))
                return null_space_update(residuals, keys, projectors[layer],
                                         None if previous is None else weight * previous, alpha)

            factors, keys = spread_over_layers(model, tok, batch, state.contexts, layers, z,
                                               config.bare_key_weight, solve)
            applied.append(WeightDelta(factors).apply(model, check_base=False))
            for name, k in keys.items():
                memory[name] = add_gram(memory.get(name), k)
            table = edit_table(model, tok, [r for part in batches[:b + 1] for r in part])
            size = len(batch)
            per_batch = [summarise([row for row in table if row["request"] // size == j]) for j in range(b + 1)]
            overall = summarise(table)
            point = dict(overall, edits=sum(len(p) for p in batches[:b + 1]), perplexity=generic_perplexity(model, tok),
                         efficacy_by_batch=[p["efficacy"] for p in per_batch],
                         update_norm=sum(float(d.dense(n).norm()) for d in applied[-1:] for n in d.factors))
            curve.append(point)
            print(f"  {setting}: {point['edits']} edits, efficacy {point['efficacy']:.3f} "
                  f"(by batch {[round(e, 2) for e in point['efficacy_by_batch']]}), generalisation "
                  f"{point['generalisation']:.3f}, specificity {point['specificity']:.3f}, "
                  f"perplexity {point['perplexity']:.2f}", flush=True)
    finally:
        for delta in reversed(applied):
            delta.revert(model)
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama")
    ap.add_argument("--facts", default=str(ROOT.parent / "shared/data/counterfact/counterfact-edit-1k.json"))
    ap.add_argument("--skip", type=int, default=0, help="start after the first N records (to tune on records that "
                    "a sequential_edit.py run with --limit N does not report on)")
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="KEY=VALUE for the value optimisation (the recipe's otherwise)")
    ap.add_argument("--grid", action="append", default=[],
                    help=f"KEY=V1,V2,... over the solve's settings {SOLVE_KEYS}; the grid is their product")
    ap.add_argument("--nullspace-scale", choices=NULLSPACE_SCALES, default=None,
                    help="how the solve reads nullspace_threshold (the recipe's otherwise); the values do not depend on it")
    ap.add_argument("--out", default=str(ROOT / "evals/results/alphaedit_solve_grid.json"))
    args = ap.parse_args()

    grid = {}
    for item in args.grid:
        key, _, values = item.partition("=")
        if key not in SOLVE_KEYS:
            raise SystemExit(f"--grid {item}: {key!r} is not one of {SOLVE_KEYS}")
        grid[key] = [float(v) for v in values.split(",")]
    parse_set(args.sets)  # fails on a malformed item before the model loads
    if args.skip < 0 or args.batches < 1 or args.batch_size < 1:
        raise SystemExit("--skip must be >= 0, --batches and --batch-size >= 1")
    requests = read_requests(args.facts, limit=args.skip + args.batches * args.batch_size)[args.skip:]
    if len(requests) < args.batches * args.batch_size:
        raise SystemExit(f"{args.facts}: {len(requests)} records after --skip {args.skip}, "
                         f"{args.batches} x {args.batch_size} asked")
    batches = [requests[i:i + args.batch_size] for i in range(0, len(requests), args.batch_size)]
    model, tok = load_model(args.model)
    base = fingerprint(model)
    config, recipe = load_config(AlphaEditConfig, "alphaedit", model_recipe=model_recipe_name(model), sets=args.sets)
    t0 = time.perf_counter()
    state = prepare(model, tok, config)
    scale = args.nullspace_scale or config.nullspace_scale
    if scale == "energy" and any(t >= 1 for t in grid.get("nullspace_threshold", [config.nullspace_threshold])):
        raise SystemExit("--nullspace-scale energy: nullspace_threshold is a share of trace(C), below 1")
    if any(not 0 <= f <= state.layers[-1] or f != int(f) for f in grid.get("first_layer", [])):
        raise SystemExit(f"--grid first_layer: a block index from 0 to the top edited layer {state.layers[-1]}")
    cache = cache_home() / "cache" / "solve_grid" / value_cache_key(base, args.facts, args.skip, args.batch_size,
                                                                    args.sets, config)
    t1 = time.perf_counter()
    targets = [batch_values(model, tok, config, state, batch, cache / f"batch{b:03d}.pt") for b, batch in enumerate(batches)]
    t2 = time.perf_counter()

    spec = arch_of(model)
    all_layers = range(int(min(grid.get("first_layer", []) + [state.layers[0]])), state.layers[-1] + 1)
    covariances = {layer: second_moment(model, tok, spec.mlp_out.format(layer), corpus=config.stats_corpus,
                                        n_tokens=config.stats_tokens, seq_len=config.stats_seq_len, seed=config.seed)[0]
                   for layer in all_layers}
    projectors_by_threshold, null_dims = {}, {}
    for threshold in {config.nullspace_threshold, *grid.get("nullspace_threshold", [])}:
        projectors_by_threshold[threshold] = {layer: null_space_projector(cov, null_space_cutoff(cov, threshold, scale))
                                              for layer, cov in covariances.items()}
        null_dims[str(threshold)] = {layer: round(float(p.trace())) for layer, p in projectors_by_threshold[threshold].items()}
    settings = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] or [{}]
    runs = []
    for setting in settings:
        t = time.perf_counter()
        curve = replay(model, tok, config, state, batches, targets, setting, projectors_by_threshold)
        runs.append({"setting": setting, "curve": curve, "seconds": round(time.perf_counter() - t, 1)})
        write_json(Path(args.out), {"facts": args.facts, "skip": args.skip, "batches": args.batches, "batch_size": args.batch_size,
                                    "subjects": [[r.subject for r in batch] for batch in batches],
                                    "recipe": str(recipe), "sets": args.sets, "value_cache": str(cache),
                                    "nullspace_scale": scale, "null_space_dims": null_dims,
                                    "prepare_seconds": round(t1 - t0, 1), "value_seconds": round(t2 - t1, 1),
                                    "runs": runs, "command": " ".join(sys.argv), **run_info()})
    assert fingerprint(model) == base, "replaying the grid did not restore the original weights"
    for run in runs:
        last = run["curve"][-1]
        print(f"{json.dumps(run['setting']):<60} efficacy {last['efficacy']:.3f}  generalisation "
              f"{last['generalisation']:.3f}  specificity {last['specificity']:.3f}  perplexity "
              f"{last['perplexity']:.2f}")


if __name__ == "__main__":
    main()
