"""Is an AlphaEdit batch's cost to generic text a few records' or everyone's? One batch of
``evals/alphaedit_solve_grid.py`` (its cached values, the recipe's solve) applied to the original
model whole, then cut into groups, each group applied alone; generic-text perplexity after each.

    python evals/alphaedit_batch_damage.py --model gemma --skip 700 --batch 2 --groups 10 \\
        --out evals/results/gemma/alphaedit_batch_damage_900.json

If a few records carried the cost, one or two groups would hold most of the whole batch's rise.
Use it on tuning records only: it explains, it does not choose.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_edit import load_model, read_requests  # noqa: E402
from llm_edit.core.config import load_config, parse_set  # noqa: E402
from llm_edit.core.files import run_info, write_json  # noqa: E402
from llm_edit.core.models import cache_home, fingerprint, model_recipe_name  # noqa: E402
from llm_edit.core.patch import WeightDelta  # noqa: E402
from llm_edit.editing.keys import spread_over_layers  # noqa: E402
from llm_edit.editing.methods.alphaedit import AlphaEditConfig, prepare  # noqa: E402
from llm_edit.editing.rank_one import null_space_update  # noqa: E402
from llm_edit.evaluating.metrics import generic_perplexity  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "evals"))
from alphaedit_solve_grid import batch_values, value_cache_key  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama")
    ap.add_argument("--facts", default=str(ROOT.parent / "shared/data/counterfact/counterfact-edit-1k.json"))
    ap.add_argument("--skip", type=int, default=0, help="as the grid's --skip (its value cache is keyed on it)")
    ap.add_argument("--batch", type=int, default=0, help="which batch after --skip")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--groups", type=int, default=10)
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="KEY=VALUE over the recipe, for the batch's values (as the grid's --set)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    parse_set(args.sets)  # a malformed item fails before the model loads
    if args.skip < 0 or args.batch < 0 or args.batch_size < 1 or not 1 <= args.groups <= args.batch_size:
        raise SystemExit("--skip, --batch >= 0; --batch-size >= 1; --groups from 1 to the batch size")
    start = args.skip + args.batch * args.batch_size
    requests = read_requests(args.facts, limit=start + args.batch_size)[start:]
    if len(requests) < args.batch_size:
        raise SystemExit(f"{args.facts}: fewer than {start + args.batch_size} records")
    model, tok = load_model(args.model)
    base = fingerprint(model)
    config, recipe = load_config(AlphaEditConfig, "alphaedit", model_recipe=model_recipe_name(model),
                                 sets=args.sets)
    state = prepare(model, tok, config)
    cache = cache_home() / "cache" / "solve_grid" / value_cache_key(base, args.facts, args.skip, args.batch_size, args.sets,
                                                                    config)
    targets = batch_values(model, tok, config, state, requests, cache / f"batch{args.batch:03d}.pt")

    def solve(layer, residuals, keys):
        return null_space_update(residuals, keys, state.projectors[layer], None, config.alpha)

    def perplexity_with(indices: list[int]) -> float:
        factors, _ = spread_over_layers(model, tok, [requests[i] for i in indices], state.contexts, state.layers,
                                        targets[indices], config.bare_key_weight, solve)
        delta = WeightDelta(factors).apply(model, check_base=False)
        try:
            return generic_perplexity(model, tok)
        finally:
            delta.revert(model)

    before = generic_perplexity(model, tok)
    whole = perplexity_with(list(range(len(requests))))
    print(f"perplexity {before:.2f}; the whole batch {whole:.2f} ({whole / before - 1:+.1%})", flush=True)
    size = -(-len(requests) // args.groups)
    groups = []
    for g in range(args.groups):
        indices = list(range(g * size, min((g + 1) * size, len(requests))))
        ppl = perplexity_with(indices)
        groups.append({"records": [start + i for i in (indices[0], indices[-1])], "perplexity": ppl,
                       "change": round(ppl / before - 1, 4), "subjects": [requests[i].subject for i in indices]})
        print(f"  group {g}: {ppl:.2f} ({ppl / before - 1:+.1%})", flush=True)
    assert fingerprint(model) == base, "the model did not end as it started"
    write_json(Path(args.out), {"facts": args.facts, "records": [start, start + len(requests) - 1], "recipe": str(recipe),
                                "alpha": config.alpha, "nullspace_threshold": config.nullspace_threshold,
                                "perplexity_before": before, "perplexity_whole_batch": whole, "groups": groups,
                                "command": " ".join(sys.argv), **run_info()})


if __name__ == "__main__":
    main()
