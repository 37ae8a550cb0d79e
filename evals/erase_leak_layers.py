"""Would an erasure at other layers spare the neighbours it loses? At each layer, how much of the
update MEMIT writes for the forgotten facts also lands on each neighbour's key.

    python evals/erase_leak_layers.py --facts evals/data/forget_tune.jsonl \\
        --neighbours evals/data/neighbours_tune.jsonl \\
        --lost evals/results/erase_leak_positions_tune32.json \\
        --layers 1,2,3,4,5,6,7,8,10,12,15 --out evals/results/erase_leak_layers_tune32.json

For every layer the keys of the forgotten facts K and of the neighbours K_o are read as the
eraser reads them (``mean_subject_keys`` over the recipe's context prefixes and bare-key weight)
and ``rank_one.leak_fractions`` gives, per neighbour, the largest share a_ij / a_ii of one
forgotten fact's write that its key receives (λ and the key statistics C of the memit-erase
recipe; no preserved keys). ``--lost`` names the neighbours an erasure lost, from
``evals/erase_leak_positions.py``'s output (a neighbour the original answered and the edited
model did not), so each layer's line sets their shares beside the kept neighbours'.

If a later layer's keys told the subjects apart, the lost neighbours' shares would fall there
while the forgotten facts still got their own write. Only forward passes: a few minutes with the
statistics cached. Use it on tuning sets only: it explains, it does not choose.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_edit import load_model  # noqa: E402
from llm_edit.core.arch import arch_of, num_layers  # noqa: E402
from llm_edit.core.config import load_config, parse_set  # noqa: E402
from llm_edit.core.files import run_info, write_json  # noqa: E402
from llm_edit.core.models import model_recipe_name  # noqa: E402
from llm_edit.editing.keys import context_templates, mean_subject_keys  # noqa: E402
from llm_edit.editing.methods import get_method  # noqa: E402
from llm_edit.editing.rank_one import leak_fractions  # noqa: E402
from llm_edit.editing.requests import EditRequest  # noqa: E402
from llm_edit.editing.stats import second_moment  # noqa: E402
from llm_edit.unlearning.forget import erase_requests  # noqa: E402
from llm_edit.unlearning.items import read_items  # noqa: E402


def read_facts(ap: argparse.ArgumentParser, path: str) -> list[EditRequest]:
    """A fact file as the erasers read it (``read_items``, ``erase_requests``); a bad line exits 2
    naming the file, line and field."""
    try:
        return erase_requests(read_items(path))
    except (OSError, ValueError) as e:  # FactFileError is a ValueError, as is a question or text item
        ap.error(f"{path}: {e.strerror}" if isinstance(e, OSError) else str(e))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--facts", required=True, help="the forgotten facts (a fact file)")
    ap.add_argument("--neighbours", required=True, help="known facts, as evals/forget_holds.py reads them")
    ap.add_argument("--lost", required=True, help="evals/erase_leak_positions.py's JSON for the same files")
    ap.add_argument("--layers", required=True, help="comma-separated layer indices, e.g. 1,2,3,4,8")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="memit-erase recipe overrides")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    parse_set(args.sets)
    try:
        layers = [int(x) for x in args.layers.split(",")]
    except ValueError:
        ap.error(f"--layers {args.layers!r}: comma-separated integers")
    try:
        judged = json.loads(Path(args.lost).read_text())["rows"]
    except (OSError, ValueError, KeyError) as e:
        ap.error(f"--lost {args.lost}: not erase_leak_positions.py's output ({e})")
    forgotten, candidates = read_facts(ap, args.facts), read_facts(ap, args.neighbours)
    known = {r["subject"] for r in judged if r["none"]}
    lost = {r["subject"] for r in judged if r["none"] and not r["full"]}

    model, tok = load_model(args.model)
    if not all(0 <= layer < num_layers(model) for layer in layers):
        ap.error(f"--layers {args.layers!r}: this model has layers 0 to {num_layers(model) - 1}")
    config, recipe = load_config(get_method("memit-erase").config, "memit-erase", model_recipe=model_recipe_name(model),
                                 sets=args.sets)
    neighbours = [n for n in candidates if n.subject in known]
    contexts = context_templates(model, tok, tuple(config.context_lengths), config.contexts_per_length, config.seed)

    per_layer = {}
    for layer in layers:
        name = arch_of(model).mlp_out.format(layer)
        cov, _ = second_moment(model, tok, name, corpus=config.stats_corpus, n_tokens=config.stats_tokens,
                               seq_len=config.stats_seq_len, seed=config.seed)
        keys = mean_subject_keys(model, tok, name, forgotten, contexts, config.bare_key_weight)
        others = mean_subject_keys(model, tok, name, neighbours, contexts, config.bare_key_weight)
        shares = leak_fractions(keys, others, cov, config.mom2_update_weight).abs().max(0).values.tolist()
        row = {n.subject: round(s, 4) for n, s in zip(neighbours, shares)}
        kept = sorted(s for subject, s in row.items() if subject not in lost)
        per_layer[layer] = {"lost": {s: row[s] for s in sorted(lost) if s in row},
                            "kept_median": round(statistics.median(kept), 4) if kept else None,
                            "kept_max": max(kept, default=None), "shares": row}
        print(f"layer {layer}: lost " + ", ".join(f"{s} {v:.2f}" for s, v in per_layer[layer]["lost"].items())
              + f"; kept median {per_layer[layer]['kept_median']}, max {per_layer[layer]['kept_max']}", flush=True)
    write_json(Path(args.out), {"facts": args.facts, "neighbours": args.neighbours, "lost_from": args.lost,
                                "recipe": str(recipe), "sets": args.sets, "per_layer": per_layer,
                                "command": sys.argv, **run_info()})


if __name__ == "__main__":
    main()
