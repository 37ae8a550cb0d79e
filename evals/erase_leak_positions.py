"""Where does an erasure reach a neighbour it should not? Through the neighbour's own subject
tokens (its key is close to a forgotten subject's: "Debenham Glacier" and "Johnson Glacier" end
on the same token), or through the other tokens (the relation's words, the answer being written)?

    python evals/erase_leak_positions.py --facts evals/data/forget_tune.jsonl --pick 4,6,9,14 \\
        --neighbours evals/data/neighbours_tune.jsonl --out evals/results/erase_leak_positions_tune.json

The picked facts are forgotten with ``llm_edit.forget`` (its default for facts, the recipe and
any ``--set``), which changes the MLP output weights of a few layers: ΔW. Each neighbour is then
answered greedily four ways, the edit's output x·ΔWᵀ subtracted by a hook where it must not act:
``full`` (the edited model), ``subject_only`` (ΔW at the neighbour's subject tokens only),
``others_only`` (everywhere but there, generated tokens included) and ``none`` (the original).
A neighbour lost under ``full`` and ``subject_only`` but not ``others_only`` is lost through its
subject's keys: what preserved keys or a more specific key must address, not the relation.

Use it on tuning sets only: it explains, it does not choose.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_edit import forget, load_model  # noqa: E402
from llm_edit.core.arch import arch_of  # noqa: E402
from llm_edit.core.config import parse_set  # noqa: E402
from llm_edit.core.files import run_info, write_json  # noqa: E402
from llm_edit.core.text import blank_out, first_mention, subject_span  # noqa: E402

WAYS = ("full", "subject_only", "others_only", "none")


def greedy_ids(model, ids: list[int], new_tokens: int) -> list[int]:
    """The prompt's ids followed by the greedy answer's, without a KV cache (``core.scoring.generate``
    keeps one): every pass must see every position, since the hook's mask is over the whole sequence."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(new_tokens):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--facts", required=True)
    ap.add_argument("--pick", required=True, help="0-based lines of --facts to forget, e.g. 4,6,9")
    ap.add_argument("--neighbours", required=True)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    parse_set(args.sets)
    facts = [json.loads(line) for line in Path(args.facts).read_text().splitlines() if line.strip()]
    try:
        picked = [facts[int(i)] for i in args.pick.split(",")]
    except (ValueError, IndexError):
        ap.error(f"--pick {args.pick!r}: comma-separated line numbers from 0 to {len(facts) - 1} of {args.facts}")
    # neighbour files are known facts ({"prompt", "subject", "target"}), as evals/forget_holds.py reads them
    neighbours = [json.loads(line) for line in Path(args.neighbours).read_text().splitlines() if line.strip()]

    model, tok = load_model(args.model)
    spec = arch_of(model)
    result = forget(model, tok, picked, sets=args.sets, progress=False)
    # the patch's factors are named by parameter ("….down_proj.weight"), in that weight's layout
    modules = {name: model.get_submodule(name.removesuffix(".weight")) for name in result.delta.factors}
    deltas = {name: result.delta.dense(name) for name in modules}
    if spec.mlp_out_transposed:  # x·ΔWᵀ wants ΔW as (out, in)
        deltas = {name: d.T for name, d in deltas.items()}

    removed: dict = {"mask": None}  # positions where the edit's output is taken back out

    def hook_for(name):
        def hook(module, inputs, output):
            mask = removed["mask"]
            if mask is None:
                return output
            at = mask[: output.shape[1]]
            output = output.clone()
            output[:, at, :] -= inputs[0][:, at, :] @ deltas[name].T.to(output.dtype)
            return output
        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in modules.items()]
    rows = []
    try:
        for n in neighbours:
            ids, first, last = subject_span(tok, n["prompt"], n["subject"])
            length = len(ids) + args.new_tokens
            subject = torch.zeros(length, dtype=torch.bool)
            subject[first:last + 1] = True
            masks = {"full": None, "subject_only": ~subject, "others_only": subject,
                     "none": torch.ones(length, dtype=torch.bool)}
            answered = {}
            for way in WAYS:
                removed["mask"] = masks[way]
                answer = tok.decode(greedy_ids(model, ids, args.new_tokens)[len(ids):])
                answered[way] = first_mention(blank_out(answer, n["subject"]), n["target"]) is not None
            removed["mask"] = None
            rows.append({"subject": n["subject"], "object": n["target"], **answered})
            print(n["subject"], "|", n["target"], "|", " ".join(f"{w}={'Y' if answered[w] else 'n'}" for w in WAYS),
                  flush=True)
    finally:
        for h in handles:
            h.remove()
        result.unload()

    known = [r for r in rows if r["none"]]
    lost = [r for r in known if not r["full"]]
    summary = {"known_before": len(known), "lost": len(lost),
               "lost_through_subject": sum(not r["subject_only"] for r in lost),
               "lost_through_others": sum(not r["others_only"] for r in lost),
               "lost_only_with_both": sum(r["subject_only"] and r["others_only"] for r in lost)}
    print(summary)
    write_json(Path(args.out), {"facts": args.facts, "picked": picked, "neighbours": args.neighbours,
                                "sets": args.sets, "summary": summary, "rows": rows,
                                "manifest": result.manifest, "command": sys.argv, **run_info()})


if __name__ == "__main__":
    main()
