"""How much of the keys' energy AlphaEdit's "null space" holds, layer by layer: what a
null-space threshold protects on a model.

    python evals/null_space_energy.py --model gemma --layers 0,1,2,3,4 \\
        --thresholds 0.08,0.02 --out evals/results/gemma/null_space_energy.json

For each layer, C = E[k kᵀ] of the MLP output projection's input (the recipe's key statistics,
as AlphaEdit's ``prepare`` reads them) and, for each threshold (read on ``--scale``, as
``nullspace_scale`` reads ``nullspace_threshold``), the projector P onto the eigen-directions of C
below it (``rank_one.null_space_projector``). Reported: its dimension, the share of the
statistics' own energy inside it (trace(PC)/trace(C)) and the share of the energy of the keys of
the generic text that perplexity is measured on (E‖Pk‖²/E‖k‖², its first 1,024 tokens). An update
of the form X·P leaves a key's output unchanged only as far as the key lies outside P: a null
space holding 40% of the keys' energy protects little. Only forward passes: seconds with the
statistics cached.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_edit import load_model  # noqa: E402
from llm_edit.core.arch import arch_of, num_layers  # noqa: E402
from llm_edit.core.config import load_config, parse_set  # noqa: E402
from llm_edit.core.hooks import Trace  # noqa: E402
from llm_edit.core.models import model_recipe_name  # noqa: E402
from llm_edit.editing.methods.alphaedit import NULLSPACE_SCALES, AlphaEditConfig, null_space_cutoff  # noqa: E402
from llm_edit.editing.rank_one import null_space_projector  # noqa: E402
from llm_edit.editing.stats import second_moment  # noqa: E402
from llm_edit.core.files import DATA_DIR, run_info, write_json  # noqa: E402

GENERIC_TOKENS = 1024


@torch.no_grad()
def generic_keys(model, tok, module_name: str) -> torch.Tensor:
    """The module's input at every token of the generic text, (n, d) float64."""
    ids = tok((DATA_DIR / "generic_text.txt").read_text(), return_tensors="pt")["input_ids"][:, :GENERIC_TOKENS]
    device = next(model.parameters()).device
    with Trace(model, [module_name], retain_input=True, stop=True) as tr:
        model(input_ids=ids.to(device))
    return tr[module_name].input[0].double().cpu()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama")
    ap.add_argument("--layers", default="2,3,4", help="comma-separated block indices")
    ap.add_argument("--thresholds", default="0.08,0.02", help="comma-separated null-space thresholds")
    ap.add_argument("--scale", choices=NULLSPACE_SCALES, default="absolute", help="how the thresholds read")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="KEY=VALUE over the recipe (its key statistics)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    parse_set(args.sets)  # a malformed item fails before the model loads
    try:
        layers = [int(x) for x in args.layers.split(",")]
        thresholds = [float(x) for x in args.thresholds.split(",")]
    except ValueError:
        raise SystemExit("--layers takes integers and --thresholds numbers, comma-separated")
    if any(t <= 0 for t in thresholds) or (args.scale == "energy" and any(t >= 1 for t in thresholds)):
        raise SystemExit("--thresholds must be > 0 (and below 1 with --scale energy: a share of trace(C))")
    model, tok = load_model(args.model)
    if any(not 0 <= layer < num_layers(model) for layer in layers):
        raise SystemExit(f"--layers: the model has layers 0..{num_layers(model) - 1}")
    config, recipe = load_config(AlphaEditConfig, "alphaedit", model_recipe=model_recipe_name(model),
                                 sets=args.sets)
    spec = arch_of(model)
    rows = []
    for layer in layers:
        name = spec.mlp_out.format(layer)
        cov, _ = second_moment(model, tok, name, corpus=config.stats_corpus, n_tokens=config.stats_tokens,
                               seq_len=config.stats_seq_len, seed=config.seed)
        cov = cov.double()
        keys = generic_keys(model, tok, name)
        row = {"layer": layer, "key_dim": cov.shape[0], "trace": round(float(cov.trace()), 4), "thresholds": []}
        for threshold in thresholds:
            cutoff = null_space_cutoff(cov, threshold, args.scale)
            projector = null_space_projector(cov, cutoff)
            row["thresholds"].append({
                "threshold": threshold, "eigenvalue_cutoff": cutoff, "null_space_dim": round(float(projector.trace())),
                "statistics_energy_inside": round(float(torch.trace(projector @ cov) / cov.trace()), 4),
                "generic_text_energy_inside": round(float((keys @ projector).pow(2).sum() / keys.pow(2).sum()), 4)})
        rows.append(row)
        print(f"layer {layer}: trace {row['trace']:.1f}; " + "; ".join(
            f"{t['threshold']}: {t['null_space_dim']} of {row['key_dim']} directions, energy inside "
            f"{t['statistics_energy_inside']:.1%} (generic text {t['generic_text_energy_inside']:.1%})"
            for t in row["thresholds"]), flush=True)
    write_json(Path(args.out), {"model": args.model, "recipe": str(recipe), "scale": args.scale,
                                "statistics": {"corpus": config.stats_corpus, "tokens": config.stats_tokens},
                                "generic_tokens": GENERIC_TOKENS, "layers": rows, "command": " ".join(sys.argv),
                                **run_info()})


if __name__ == "__main__":
    main()
