"""How much of ROME's write each prompt's key receives: s = dᵀk, d = C⁻¹k*/(k*ᵀC⁻¹k*)
(``rank_one.write_direction``), so s = 1 at k* itself. The value optimisation gives every prompt
δ whole at its subject; the update writes s·δ there. Printed by kind of prompt (the context
prefixes, each training form, the judge's three forms), median and range over the facts.

    python evals/key_shares.py --facts evals/data/counterfact_train_known40.jsonl \\
        --out evals/results/key_shares_tune40.json

Forward passes only: no edit is made. The judge's forms are measured, never trained on.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_edit import load_model, read_requests  # noqa: E402
from llm_edit.core.arch import arch_of  # noqa: E402
from llm_edit.core.config import load_config  # noqa: E402
from llm_edit.core.files import run_info, write_json  # noqa: E402
from llm_edit.core.forms import question_template  # noqa: E402
from llm_edit.core.hooks import Trace  # noqa: E402
from llm_edit.core.models import model_recipe_name  # noqa: E402
from llm_edit.core.text import encode_with_subject, make_batch  # noqa: E402
from llm_edit.editing.keys import context_templates, mean_subject_key  # noqa: E402
from llm_edit.editing.methods.erase import value_objective  # noqa: E402
from llm_edit.editing.methods.rome import ROMEConfig  # noqa: E402
from llm_edit.editing.rank_one import write_direction  # noqa: E402
from llm_edit.editing.stats import second_moment  # noqa: E402
from llm_edit.evaluating.edit_forms import COMPLETE, CONTEXT, QUESTION  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama")
    ap.add_argument("--facts", required=True)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    model, tok = load_model(args.model)
    config, _ = load_config(ROMEConfig, "rome", model_recipe=model_recipe_name(model), sets=args.sets)
    name = arch_of(model).mlp_out.format(config.layer)
    cov, _ = second_moment(model, tok, name, corpus=config.stats_corpus, n_tokens=config.stats_tokens,
                           seq_len=config.stats_seq_len, seed=config.seed)
    contexts = context_templates(model, tok, config.context_lengths, config.contexts_per_length, config.seed)

    @torch.no_grad()
    def key_at(template: str, subject: str, chat: bool = False, reply: str | None = None) -> torch.Tensor:
        ids, sub = encode_with_subject(tok, template, subject, chat=chat, reply=reply)
        batch = make_batch(tok.pad_token_id, [ids], subject_index=[sub])
        with Trace(model, [name], retain_input=True, stop=True) as tr:
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        return tr[name].input[0, sub].float()

    shares: dict[str, list[float]] = {}
    for request in read_requests(args.facts, limit=args.limit):
        key = mean_subject_key(model, tok, name, request, contexts, config.bare_key_weight)
        direction = write_direction(key, cov)
        prompts = [("context: bare" if i == 0 else "context: prefixed", c.replace("{}", request.prompt), False, None)
                   for i, c in enumerate(contexts)]
        prompts += [(f"training form: {f.name}", f.template, f.chat, f.reply)
                    for f in value_objective(config, [request], tok, model).get("forms", [[]])[0]]
        question = question_template(request.relation_id)
        prompts.append(("judge: chat", question or COMPLETE.format(request.prompt), True, None))
        if question:
            prompts.append(("judge: question", QUESTION.format(question), False, None))
        prompts.append(("judge: in context", CONTEXT + request.prompt, False, None))
        for kind, template, chat, reply in prompts:
            shares.setdefault(kind, []).append(float(direction @ key_at(template, request.subject, chat, reply)))
    summary = {kind: {"n": len(v), "median": statistics.median(v), "min": min(v), "max": max(v)}
               for kind, v in shares.items()}
    for kind, row in summary.items():
        print(f"{kind:32s} n={row['n']:4d}  median {row['median']:.3f}  range {row['min']:.3f} to {row['max']:.3f}")
    write_json(args.out, {"facts": args.facts, "recipe_sets": args.sets, "layer": config.layer, "summary": summary,
                          "shares": shares, **run_info()})


if __name__ == "__main__":
    main()
