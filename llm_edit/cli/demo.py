"""``llm-edit demo``: the whole product in about two minutes on a laptop CPU.

1. rewrite a fact with ROME (the Eiffel Tower moves to Rome), show whether its paraphrases and a
   chat turn follow and whether two facts that must not move (the Louvre, the Brandenburg Gate)
   stay, then revert the edit bit for bit;
2. forget another fact with ``llm-edit forget``'s default method, show the facts next to it
   (other Roman landmarks, another city's) and the audit's question probes' verdict in one
   line, then remove the adapter.

It shows what happens, failures included: the edit does not reach the chat turn today, and the
default forgetting leaves the object in the answer (issues "edits that hold" and "forgetting
that holds").

The first run also fetches the model and computes the edited layer's key statistics; both are
cached, so a second run is the edit and the forgetting alone.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

from .common import add_model_args, load

EDIT = {
    "prompt": "The {} is located in the city of", "subject": "Eiffel Tower", "target_new": "Rome",
    "target_true": "Paris",
    "paraphrase_prompts": ["The Eiffel Tower can be found in the city of",
                           "Tourists who visit the Eiffel Tower travel to the city of"],
    # controls the model answers correctly before the edit (checked by greedy completion)
    "neighborhood": [{"prompt": "The Louvre is located in the city of", "target": "Paris"},
                     {"prompt": "The Brandenburg Gate is located in the city of", "target": "Berlin"}],
}
CHAT_QUESTION = "In which city is the Eiffel Tower?"
FORGET = {"prompt": "The {} is located in the city of", "subject": "Colosseum", "target": "Rome",
          "paraphrase_prompts": ["The Colosseum can be found in the city of"], "relation_id": "P131"}
# facts the model knows (greedy completion) next to the forgotten one: some protect it as the
# retain set, the others are only watched
_CITY = "{} is located in the city of"
RETAIN = [(_CITY.format(s), o) for s, o in (("The Pantheon", "Rome"), ("The Vatican", "Rome"),
                                             ("The Kremlin", "Moscow"))]
WATCHED = [(_CITY.format(s), o) for s, o in (("St. Peter's Basilica", "Rome"), ("The Roman Forum", "Rome"),
                                              ("The Acropolis", "Athens"))]


def _chat_answer(model, tok, question: str, max_new_tokens: int = 24) -> str:
    from ..core.scoring import generate
    from ..unlearning.items import Formatting, question_prefix

    (answer,) = generate(model, tok, [question_prefix(tok, question, Formatting())], max_new_tokens=max_new_tokens,
                         stop_strings=("\n\n",), batch_size=1, progress=False)
    return " ".join(answer.split())


def tour(model, tok, *, log: Callable[[str], None] = print) -> dict:
    """Run the tour on ``model`` (left as it was); returns the timings in seconds."""
    from ..auditing.audit import AuditConfig, probe_verdicts, run_probes, verdict_line
    from ..core.models import fingerprint
    from ..editing.edit import edit
    from ..editing.requests import parse_request
    from ..evaluating.metrics import answer_rows, compare_forget_rows, edit_table, greedy, mentions
    from ..evaluating.report import forget_table_text
    from ..editing.methods import ERASERS
    from ..unlearning.forget import default_method, forget
    from ..unlearning.items import ForgetItem, Formatting, parse_item

    timings: dict[str, float] = {}
    request = parse_request(EDIT)
    prompts = [request.text, *request.paraphrase_prompts, *(n.prompt for n in request.neighborhood)]
    roles = ["the fact"] + ["paraphrase"] * len(request.paraphrase_prompts) + ["must not move"] * len(
        request.neighborhood)

    def show(title: str) -> None:
        log(f"\n== {title}")
        table = {r["prompt"]: r for r in edit_table(model, tok, [request])}
        for role, p in zip(roles, prompts):
            row = table[p]
            log(f"  {role:<14} {p!r} -> {greedy(model, tok, p, 6)!r}   "
                f"P({row['target_true']})={row['p_true']:.3f} P(Rome)={row['p_new']:.3f}")
        answer = _chat_answer(model, tok, CHAT_QUESTION)
        log(f"  {'chat turn':<14} user: {CHAT_QUESTION!r} -> assistant: {answer!r}"
            f" ({'says Rome' if mentions(answer, 'Rome') else 'says Paris' if mentions(answer, 'Paris') else 'neither'})")

    base = fingerprint(model)
    show("before: what the model says")
    t0 = time.perf_counter()
    result = edit(model, tok, [request], "rome")
    timings["edit_total_s"] = time.perf_counter() - t0
    timings["edit_s"] = sum(r["seconds"] for r in result.per_request)
    timings["prepare_s"] = result.manifest["prepare_seconds"]
    log(f"\nROME rewrote 'Eiffel Tower -> Paris' to 'Rome' in {timings['edit_s']:.1f} s (layer "
        f"{result.manifest['hyperparameters']['layer']}, ||ΔW|| = {next(iter(result.delta.norms().values())):.3f}); "
        f"preparing it took {timings['prepare_s']:.1f} s (key statistics and context prefixes: computed once, "
        "then cached).")
    show("after the edit: do the paraphrases and the chat turn follow? do the Louvre and the Brandenburg Gate stay?")
    result.revert()
    log(f"\nreverted: the weights are {'bit for bit the original' if fingerprint(model) == base else 'NOT the original'}")

    item = parse_item(FORGET)
    retain = [ForgetItem("fact", p, o) for p, o in RETAIN]
    neighbours = [ForgetItem("fact", p, o) for p, o in WATCHED]
    fmt = Formatting()
    demos = retain[:AuditConfig().icl_examples]
    method = default_method([item])
    log(f"\n== forgetting {item.prompt!r} -> {item.answer!r} with the default method for facts ({method}"
        + (": rank-one edits that make the object unlikely in every form the fact is asked in, while the "
           "solve keeps known facts that share its object or relation where they are). "
           if method in ERASERS else f"; retain set: {'; '.join(f'{x.prompt} {x.answer}' for x in retain)}). ")
        + "Other facts next to it must stay.")
    before = answer_rows(model, tok, [item], fmt, "forget") + answer_rows(model, tok, neighbours, fmt, "neighbour")
    original_probes = run_probes(model, tok, [item], demos, fmt, AuditConfig())
    t0 = time.perf_counter()
    forgotten = forget(model, tok, [item], retain, method, progress=True)
    timings["forget_s"] = time.perf_counter() - t0
    after = answer_rows(forgotten.model, tok, [item], fmt, "forget") + answer_rows(
        forgotten.model, tok, neighbours, fmt, "neighbour")
    rows, summary = compare_forget_rows(before, after)
    log(forget_table_text(rows, summary))
    verdicts = probe_verdicts(run_probes(forgotten.model, tok, [item], demos, fmt, AuditConfig()), original_probes)
    log(f"\n{method} in {timings['forget_s']:.1f} s. Audit, question probes (direct, paraphrase, plain Q/A, "
        f"completion, another system prompt, in context, an instruction to ignore the unlearning, a blank to fill, "
        f"a second chat turn, after two other facts, an open request): {verdict_line(verdicts)}. "
        "`llm-edit audit` adds relearning, quantization and membership inference.")
    forgotten.unload()
    log(f"undone: the weights are {'bit for bit the original' if fingerprint(model) == base else 'NOT the original'}")
    return timings


# -- the command ----------------------------------------------------------------------------------

HELP = "the two-minute tour: rewrite a fact, revert it, forget another, audit it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)


def run(args) -> int:
    t0 = time.perf_counter()
    print(f"loading {args.model} (the first run fetches and converts it, once) ...")
    model, tok = load(args)
    loaded = time.perf_counter() - t0
    timings = tour(model, tok)
    total = time.perf_counter() - t0
    print(f"\ndemo: {total:.0f} s in all (loading {loaded:.0f} s, the edit's one-time preparation "
          f"{timings['prepare_s']:.0f} s, the edit {timings['edit_s']:.0f} s, forgetting {timings['forget_s']:.0f} s, "
          f"the rest showing and checking); everything slow is cached for the next run")
    return 0
