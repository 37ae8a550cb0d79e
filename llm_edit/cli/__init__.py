"""The ``llm-edit`` command line (also ``python -m llm_edit``).

Bad input (a malformed fact file, an unknown recipe key, a model that cannot be loaded, a
corrupt patch) exits with status 2 and a message naming the file, line and field, before any
output is written. Output directories are written atomically.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

EXIT_BAD_INPUT = 2


def _bad_input_errors():
    from ..core.arch import UnsupportedArchitecture
    from ..core.config import ConfigError
    from ..core.files import FactFileError, OutputPathError
    from ..core.models import ModelLoadError
    from ..core.patch import PatchError
    from ..core.text import SubjectNotFound
    from ..editing.session import SessionError
    from ..evaluating.tofu import TofuDataError

    return (FactFileError, ConfigError, ModelLoadError, PatchError, UnsupportedArchitecture, SubjectNotFound,
            FileExistsError, TofuDataError, SessionError, OutputPathError)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="llama", help="alias, hub id, model directory or .gguf file (default: llama)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model's own Python code from the hub (off by default)")


def build_parser() -> argparse.ArgumentParser:
    from ..editing.methods import ERASERS, METHODS
    from ..unlearning.methods import UNLEARNERS

    parser = argparse.ArgumentParser(prog="llm-edit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list model aliases and their cache; --pull fetches one")
    p.add_argument("--pull", metavar="NAME", help="fetch and convert an alias into the cache")

    p = sub.add_parser("edit", help="insert or rewrite facts and write the edited model")
    _add_model_args(p)
    p.add_argument("--facts", required=True, help="JSONL (or JSON array) of edit requests, or CounterFact JSON")
    p.add_argument("--method", choices=sorted(METHODS), help="editing method (default: rome, or the session's)")
    p.add_argument("--layers", help="'auto': take the edited layer from causal tracing (llm-edit locate)")
    p.add_argument("--recipe", help="YAML hyper-parameter file or recipe name (default: the model's)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one hyper-parameter (repeatable); values are YAML")
    p.add_argument("--batch-size", type=int, help="requests per batch (MEMIT, AlphaEdit); batches are applied in order")
    p.add_argument("--session", metavar="DIR", help="a sequential editing session: created if DIR has none, else "
                   "continued (its batches are re-applied to --model, its base model, and its method, recipe "
                   "and settings are reused); every batch is saved there as it lands")
    p.add_argument("--out", help="output directory (Hugging Face model + patch + results); optional with --session")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-save-model", action="store_true", help="write only the patch and results")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after probability table")

    p = sub.add_parser("apply", help="apply a patch file to a model and write the result")
    _add_model_args(p)
    p.add_argument("--patch", required=True, action="append", help="patch file (repeat to stack, in order)")
    p.add_argument("--no-check-base", action="store_true",
                   help="apply even where the patch has no usable base-weight sha256 or it does not match")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("forget", help="unlearn facts, questions or text (LoRA, through accelerate)")
    _add_model_args(p)
    p.add_argument("--facts", required=True, help="JSONL/JSON of items to forget: facts, question/answer pairs or text")
    p.add_argument("--retain", help="items to keep (default: text sampled from the model itself)")
    p.add_argument("--method", default="npo", choices=sorted(UNLEARNERS) + sorted(ERASERS),
                   help="a training-based unlearner, or an erasure by rank-one edits (" + ", ".join(ERASERS) + ")")
    p.add_argument("--layers", help="'auto': take the edited/steered layer(s) from causal tracing (rome-erase, memit-erase, rmu)")
    p.add_argument("--recipe", help="YAML hyper-parameter file or recipe name (default: the model's)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one hyper-parameter (repeatable); values are YAML")
    p.add_argument("--out", required=True, help="output directory (merged model, adapter/, manifest, results)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--checkpoint-dir", help="save resumable checkpoints here (and resume from the newest)")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after table")
    p.add_argument("--show", type=int, default=10, help="rows of each table to print (all go to results.csv)")

    p = sub.add_parser("locate", help="causal tracing: which layers and tokens carry a fact")
    _add_model_args(p)
    p.add_argument("--prompt", help="the factual prompt, with {} for the subject or the subject verbatim")
    p.add_argument("--subject", help="the subject whose tokens are corrupted")
    p.add_argument("--target", help="the object (default: the model's own top next token)")
    p.add_argument("--facts", help="average tracing over a file of facts ('knowns': ROME's 1,209 known facts)")
    p.add_argument("--limit", type=int, default=50, help="average over the first N facts the model answers correctly")
    p.add_argument("--kinds", default="hidden,mlp,attn", help="states to restore: hidden, mlp, attn (comma-separated)")
    p.add_argument("--samples", type=int, default=10, help="noise draws per run (ROME: 10)")
    p.add_argument("--window", type=int, default=10, help="layers restored together for mlp/attn (ROME: 10)")
    p.add_argument("--noise", type=float, help="noise scale (default: 3 x std of subject embeddings over the known facts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256, help="sequences per forward pass")
    p.add_argument("--out", required=True, help="output directory (trace.json + heat maps, or average.json + plot)")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("eval", help="evaluate a model: the TOFU forget/retain suite or the CounterFact editing suite")
    _add_model_args(p)
    p.add_argument("--suite", required=True, choices=["tofu", "counterfact"])
    p.add_argument("--split", default="forget10", help="TOFU forget split: forget01, forget05, forget10")
    p.add_argument("--authors", type=int, help="CPU-sized TOFU: only the first N authors (2-20)")
    p.add_argument("--forget-authors", type=int, help="CPU-sized TOFU: forget the last K of the N authors")
    p.add_argument("--eval-limit", type=int, help="TOFU: at most this many retain / real-author / world-fact rows")
    p.add_argument("--retain-ref", help="TOFU: the retain model's report.json (or its folder), or a retain model "
                                        "directory (evaluated here, cached): needed for forget quality and PrivLeak")
    p.add_argument("--tofu-data", help="folder of TOFU's JSON files (default: $LLM_EDIT_TOFU_DATA, else the hub)")
    p.add_argument("--facts", help="counterfact: edit requests (JSONL, or CounterFact JSON in EasyEdit's flat format)")
    p.add_argument("--limit", type=int, help="counterfact: only the first N requests")
    p.add_argument("--max-new-tokens", type=int, default=200, help="greedy answer length cap (TOFU: 200)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per scoring pass")
    p.add_argument("--generation-batch-size", type=int, default=32, help="prompts per generation batch")
    p.add_argument("--no-cache", action="store_true", help="recompute even if this evaluation is cached")
    p.add_argument("--out", required=True, help="output directory: report.json, report.md, PNG plots")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("tofu", help="the TOFU protocol: fine-tune, retain model, unlearn, evaluate, one table")
    _add_model_args(p)
    p.add_argument("--split", default="forget10", help="forget01, forget05 or forget10")
    p.add_argument("--method", default="npo", help="unlearning method(s), comma-separated: "
                   + ", ".join(sorted(UNLEARNERS)))
    p.add_argument("--authors", type=int, help="CPU-sized TOFU: the first N authors (2-20); default: all 200")
    p.add_argument("--forget-authors", type=int, help="CPU-sized TOFU: forget the last K of the N authors "
                                                       "(default: N x the split's percentage, at least 1)")
    p.add_argument("--eval-limit", type=int, help="at most this many retain / real-author / world-fact rows")
    p.add_argument("--tofu-data", help="folder of TOFU's JSON files (default: $LLM_EDIT_TOFU_DATA, else the hub)")
    p.add_argument("--finetune-recipe", help="fine-tuning recipe file or name (default: recipes/finetune/<model>)")
    p.add_argument("--finetune-set", dest="finetune_sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--recipe", help="unlearning recipe (default: recipes/<method>/tofu-<model>.yaml if present)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one unlearning hyper-parameter (repeatable)")
    p.add_argument("--no-holdout-stop", action="store_true",
                   help="run every unlearning step (default: stop at the fine-tuned model's holdout probability)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--generation-batch-size", type=int, default=32)
    p.add_argument("--out", required=True, help="output directory: report.json, report.md, PNG plots")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("audit", help="probe an unlearned model: what survives paraphrases, attacks, relearning, quantization")
    _add_model_args(p)
    p.add_argument("--original", required=True, help="the model before unlearning (alias, hub id or directory)")
    p.add_argument("--facts", required=True, help="the forget items (facts or question/answer pairs)")
    p.add_argument("--retain", help="retain items: in-context examples, benign relearning, the utility guard")
    p.add_argument("--holdout", help="items never trained on, for membership inference")
    p.add_argument("--retain-ref", help="the retain model (directory or alias), or its TOFU report.json (PrivLeak only)")
    p.add_argument("--limit", type=int, help="only the first N forget items")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="audit setting (thresholds, budgets; see llm_edit.auditing.audit.AuditConfig)")
    p.add_argument("--out", required=True, help="output directory: audit.json, audit.md, recovery.png")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("demo", help="rewrite one fact in the default model and show what changes")
    _add_model_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # imports torch: Ctrl-C here is handled below too
        return {"models": cmd_models, "edit": cmd_edit, "apply": cmd_apply, "forget": cmd_forget,
                "locate": cmd_locate, "demo": cmd_demo,
                "eval": cmd_eval, "tofu": cmd_tofu, "audit": cmd_audit}[args.command](args)
    except KeyboardInterrupt:  # first: the clause below imports modules, which an interrupt may have cut short
        print("llm-edit: interrupted; nothing was written", file=sys.stderr)
        return 130
    except _bad_input_errors() as e:
        print(f"llm-edit: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def cmd_models(args) -> int:
    from ..core.models import ALIASES, alias_table, pull

    if args.pull:
        if args.pull not in ALIASES:
            print(f"llm-edit: error: unknown alias {args.pull!r}; known: {', '.join(ALIASES)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(pull(args.pull))
        return 0
    rows = alias_table()
    width = max(len(r["alias"]) for r in rows)
    for r in rows:
        print(f"{r['alias']:<{width}}  {r['description']}\n{'':<{width}}  cache: {r['cache']}")
    return 0


def _load(args):
    from ..core.models import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)


def _check_requests_fit(model, tok, source, numbered) -> None:
    """Every prompt of an edit file fits the model's context (checked before any work)."""
    from ..core.text import check_context, context_length
    from ..editing.requests import request_texts

    check_context(tok, context_length(model), str(source),
                  (e for line, r in numbered for e in request_texts(line, r)))


def _check_items_fit(model, tok, source, numbered) -> None:
    from ..core.text import check_context, context_length
    from ..unlearning.items import item_texts

    check_context(tok, context_length(model), str(source), (e for line, x in numbered for e in item_texts(line, x)))


def _check_out(args) -> None:
    from ..core.files import check_output_dir

    check_output_dir(args.out, overwrite=args.overwrite)


def _save_model(model, tok, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _results_csv(before: list[dict], after: list[dict]) -> str:
    buf = io.StringIO()
    fields = ["request", "kind", "prompt", "target_true", "target_new", "p_true_before", "p_new_before",
              "p_true_after", "p_new_after"]
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for b, a in zip(before, after):
        w.writerow({**{k: b[k] for k in fields[:5]}, "p_true_before": f"{b['p_true']:.6g}",
                    "p_new_before": f"{b['p_new']:.6g}", "p_true_after": f"{a['p_true']:.6g}",
                    "p_new_after": f"{a['p_new']:.6g}"})
    return buf.getvalue()


def _print_metrics(before: dict, after: dict) -> None:
    print(f"{'metric':<16}{'before':>10}{'after':>10}")
    for key in after:
        if after[key] is None:
            continue
        fmt = (lambda v: "-" if v is None else f"{v:.3f}")
        print(f"{key:<16}{fmt(before.get(key)):>10}{fmt(after[key]):>10}")


def _layers_to_sets(args, config_cls) -> None:
    """``--layers auto`` (or a value) sets the recipe key ``layers`` (MEMIT) or ``layer`` (ROME, RMU)."""
    import dataclasses

    if args.layers is None:
        return
    fields = {f.name for f in dataclasses.fields(config_cls)}
    key = "layers" if "layers" in fields else "layer" if "layer" in fields else None
    if key is None:
        from ..core.config import ConfigError

        raise ConfigError(f"--layers: method {args.method!r} has no layer to choose")
    args.sets = list(args.sets) + [f"{key}={args.layers}"]


def _session_settings(args, spec) -> None:
    """Fold ``--batch-size`` into ``--set``; with an existing ``--session``, take its method and
    settings (they are fixed when the session is created, so every batch is made the same way)."""
    import dataclasses

    from ..core.config import ConfigError
    from ..editing.session import SESSION_FILE, read_info

    file = Path(args.session) / SESSION_FILE if args.session else None
    if file is not None and file.exists():
        info = read_info(args.session)
        given = [flag for flag, value in (("--recipe", args.recipe), ("--set/--layers", args.sets),
                                          ("--batch-size", args.batch_size)) if value]
        if given or args.method_given and args.method != info.get("method"):
            raise ConfigError(f"{args.session} continues a {info.get('method')} session whose settings are "
                              f"fixed; drop {', '.join(given) or '--method'} (or start a new session)")
        args.method, args.recipe, args.sets = info["method"], info.get("recipe"), list(info.get("sets", []))
        return
    if args.batch_size is not None:
        if "batch_size" not in {f.name for f in dataclasses.fields(spec.config)}:
            raise ConfigError(f"--batch-size: {args.method} edits one fact at a time")
        args.sets = list(args.sets) + [f"batch_size={args.batch_size}"]


def cmd_edit(args) -> int:
    from ..core.config import load_config
    from ..core.files import atomic_directory, write_json
    from ..core.models import ALIASES
    from ..editing.edit import edit
    from ..editing.methods import get_method
    from ..editing.requests import numbered_requests
    from ..evaluating.metrics import edit_table, fluency, generic_perplexity, summarise

    if args.out is None and args.session is None:
        from ..core.config import ConfigError

        raise ConfigError("edit needs --out (or --session, to keep the edits in a session only)")
    args.method_given, args.method = args.method is not None, args.method or "rome"
    numbered = numbered_requests(args.facts)  # validate input before anything slow
    requests = [r for _, r in numbered]
    if args.out is not None:
        _check_out(args)
    spec = get_method(args.method)
    _layers_to_sets(args, spec.config)
    _session_settings(args, spec)
    spec = get_method(args.method)
    alias = ALIASES.get(args.model)
    # a bad recipe or --set fails now, not after loading the model
    load_config(spec.config, args.method, recipe=args.recipe, model_recipe=alias.recipe if alias else None,
                sets=args.sets)
    model, tok = _load(args)
    _check_requests_fit(model, tok, args.facts, numbered)
    session = None
    if args.session is not None:
        from ..editing.session import SESSION_FILE, EditSession

        if (Path(args.session) / SESSION_FILE).exists():
            session = EditSession.open(args.session, model, tok)
            print(f"session {args.session}: {len(session.applied)} batch(es), {session.facts} fact(s) re-applied")
        else:
            session = EditSession.create(args.session, model, args.method, recipe=args.recipe, sets=args.sets)
    evaluate = not args.no_eval and any(r.target_true for r in requests)
    before = edit_table(model, tok, requests) if evaluate else []
    flu_prompts = [r.text for r in requests[:20]]
    flu_before = fluency(model, tok, flu_prompts) if evaluate else None
    ppl_before = generic_perplexity(model, tok) if evaluate else None
    t0 = time.perf_counter()
    if session is not None:
        result = session.edit(tok, requests)
    else:
        result = edit(model, tok, requests, args.method, recipe=args.recipe, sets=args.sets)
    seconds = time.perf_counter() - t0
    after = edit_table(model, tok, requests) if evaluate else []
    metrics_before = dict(summarise(before), fluency=flu_before, perplexity=ppl_before) if evaluate else {}
    metrics_after = dict(summarise(after), fluency=fluency(model, tok, flu_prompts),
                         perplexity=generic_perplexity(model, tok)) if evaluate else {}
    if args.out is not None:
        with atomic_directory(Path(args.out), overwrite=args.overwrite) as out:
            if not args.no_save_model:
                _save_model(model, tok, out)
            result.save_patch(out / "patch.safetensors")
            write_json(out / "llm_edit_manifest.json", dict(result.manifest, edit_seconds=round(seconds, 2),
                                                             session=args.session, metrics_before=metrics_before,
                                                             metrics_after=metrics_after))
            if evaluate:
                (out / "results.csv").write_text(_results_csv(before, after))
                write_json(out / "metrics.json", {"before": metrics_before, "after": metrics_after})
    where = " -> ".join(x for x in (args.session and f"session {args.session} "
                                    f"({len(session.applied)} batches, {session.facts} facts)", args.out) if x)
    prepare = result.manifest.get("prepare_seconds") or 0.0
    editing = max(seconds - prepare, 1e-9)  # the one-time statistics are not the edit's time
    print(f"edited {len(requests)} fact(s) with {args.method} in {editing:.1f} s "
          f"({len(requests) / editing:.2f} facts/s; preparing took {prepare:.1f} s more: key statistics and "
          f"context prefixes, computed once and cached) -> {where}")
    if evaluate:
        _print_metrics(metrics_before, metrics_after)
    return 0


def cmd_apply(args) -> int:
    from ..core.files import atomic_directory, write_json
    from ..core.patch import WeightDelta, load_patch

    deltas = [load_patch(p) for p in args.patch]  # validate every file before loading the model
    _check_out(args)
    model, tok = _load(args)
    applied = []
    try:
        for d in deltas:
            applied.append(d.apply(model, check_base=not args.no_check_base))
    except BaseException:
        for d in reversed(applied):
            d.revert(model)
        raise
    with atomic_directory(Path(args.out), overwrite=args.overwrite) as out:
        _save_model(model, tok, out)
        WeightDelta.stack(applied).save(out / "patch.safetensors")
        write_json(out / "llm_edit_manifest.json", {"base_model": args.model, "patches": args.patch,
                                                     "stacked": [d.manifest for d in deltas]})
    print(f"applied {len(deltas)} patch(es) -> {args.out}")
    return 0


def cmd_forget(args) -> int:
    import torch
    from accelerate import Accelerator

    from ..core.config import load_config
    from ..core.files import FactFileError
    from ..core.models import ALIASES, load_model
    from ..editing.methods import ERASERS
    from ..evaluating.metrics import answer_rows, compare_forget_rows
    from ..evaluating.report import forget_table_text
    from ..unlearning.forget import erase_requests, forget
    from ..unlearning.items import Formatting, given_neighbours, neighbour_facts, numbered_items
    from ..unlearning.methods import get_unlearner

    numbered_forget = numbered_items(args.facts)  # validate input before anything slow
    numbered_retain = numbered_items(args.retain) if args.retain else []
    forget_items = [x for _, x in numbered_forget]
    retain_items = [x for _, x in numbered_retain] or None
    _check_out(args)
    erasing = args.method in ERASERS
    if erasing:
        try:
            erase_requests(forget_items)  # facts only: fail now, not after loading the model
        except ValueError as e:
            raise FactFileError(args.facts, None, None, str(e)) from None
        if retain_items:
            print(f"llm-edit: note: {args.method} has no retain term; --retain is only evaluated", file=sys.stderr)
    spec = ERASERS[args.method] if erasing else get_unlearner(args.method)
    _layers_to_sets(args, spec.config)
    alias = ALIASES.get(args.model)
    config, _ = load_config(spec.config, args.method, recipe=args.recipe,
                            model_recipe=alias.recipe if alias else None, sets=args.sets)
    use_cpu = args.device == "cpu" or (args.device is None and not torch.cuda.is_available())
    acc = Accelerator(cpu=use_cpu)
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device or acc.device,
                            trust_remote_code=args.trust_remote_code)
    _check_items_fit(model, tok, args.facts, numbered_forget)
    if args.retain:
        _check_items_fit(model, tok, args.retain, numbered_retain)
    main_process = acc.is_main_process
    fmt = Formatting() if erasing else Formatting(config.use_chat_template, config.system_prompt)
    evaluate = not args.no_eval and main_process
    # what the table compares: the forget items, facts that share their object or relation (the
    # first to suffer), and a sample of the retain items
    groups = {"forget": forget_items, "neighbour": given_neighbours(forget_items) or neighbour_facts(forget_items),
              "retain": (retain_items or [])[:20]}
    before = [row for role, items in groups.items() for row in answer_rows(model, tok, items, fmt, role)] \
        if evaluate else []
    extra = {} if erasing else {"checkpoint_dir": args.checkpoint_dir, "accelerator": acc}
    result = forget(model, tok, forget_items, retain_items, args.method, recipe=args.recipe, sets=args.sets,
                    progress=main_process, **extra)
    if not main_process:
        return 0
    rows, summary = [], {}
    if evaluate:
        after = [row for role, items in groups.items() for row in answer_rows(result.model, tok, items, fmt, role)]
        rows, summary = compare_forget_rows(before, after)
    result.manifest["eval"] = summary
    result.save(Path(args.out), overwrite=args.overwrite, extra_json={"results.json": rows} if evaluate else None)
    if evaluate:
        print(forget_table_text(rows, summary, args.show))
    t = result.manifest["training"]
    if erasing:
        print(f"\n{args.method}: {len(forget_items)} fact(s) erased by rank-one edits of layer "
              f"{result.manifest['layer']} in {t['seconds']:.1f} s; patch: {Path(args.out) / 'patch.safetensors'}")
        return 0
    print(f"\n{args.method}: {t['steps']} steps in {t['seconds']:.1f} s (effective batch {t['effective_batch_size']}, "
          f"{t['processes']} process(es)); retain: {result.manifest['retain_source']}"
          + (f"; stopped early: {t['stopped_early']}" if t["stopped_early"] else "") + f" -> {args.out}")
    return 0


def cmd_locate(args) -> int:
    from ..core.files import atomic_directory, run_info, write_json
    from ..core.models import fingerprint
    from ..locating import trace as locate

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in locate.KINDS]
    if unknown or not kinds:
        print(f"llm-edit: error: --kinds: unknown kind(s) {unknown}; choose from {', '.join(locate.KINDS)}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if bool(args.facts) == bool(args.prompt or args.subject):
        print("llm-edit: error: give either --prompt and --subject (one fact) or --facts FILE (average tracing)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.prompt and not args.subject:
        print("llm-edit: error: --prompt needs --subject", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        locate.check_settings(prompt=args.prompt, subject=args.subject, target=args.target, samples=args.samples,
                              window=args.window, noise=args.noise, limit=args.limit, batch_size=args.batch_size)
    except ValueError as e:
        from ..core.config import ConfigError

        raise ConfigError(f"locate: {e}") from None
    facts = locate.known_facts(None if args.facts == "knowns" else args.facts) if args.facts else None
    _check_out(args)
    model, tok = _load(args)
    if facts is None:
        from ..core.text import check_context, context_length

        check_context(tok, context_length(model), "--prompt", [(None, "prompt", args.prompt, " " + (args.target or ""))])
    settings = {"kinds": kinds, "samples": args.samples, "window": args.window, "seed": args.seed}
    manifest = {"model": args.model, "model_fingerprint": fingerprint(model), **settings, **run_info()}
    if facts is None:
        result = locate.trace(model, tok, args.prompt, args.subject, args.target, noise=args.noise,
                              batch_size=args.batch_size, progress=True, **settings)
        with atomic_directory(Path(args.out), overwrite=args.overwrite) as out:
            write_json(out / "trace.json", {**result.to_dict(), "manifest": manifest})
            for kind in kinds:
                result.plot(out / f"trace_{kind}.png", kind)
        print(f"{result.prompt!r} -> {result.target!r}: p clean {result.p_clean:.3f}, corrupted "
              f"{result.p_corrupted:.3f} (noise {result.noise_scale:.3f}, {result.samples} draws) "
              f"in {result.seconds:.1f} s" + ("" if result.correct else "; NOTE: not the model's top prediction"))
        for kind in kinds:
            ie = result.indirect_effect(kind).nan_to_num(nan=-1.0)
            t, l = divmod(int(ie.argmax()), ie.shape[1])
            at_subject = ie[result.subject_last]
            print(f"  {locate.KINDS[kind]:<28} strongest: token {t} {result.tokens[t]!r}, layer {l} "
                  f"(IE {ie[t, l]:.3f}); at the last subject token peaks at layer {int(at_subject.argmax())}")
        print(f"-> {args.out}")
        return 0
    if args.noise is not None:
        print("llm-edit: error: --noise applies to one trace; average tracing estimates it from the known facts",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    avg = locate.trace_facts(model, tok, facts, limit=args.limit, batch_size=args.batch_size, **settings)
    with atomic_directory(Path(args.out), overwrite=args.overwrite) as out:
        write_json(out / "average.json", {**avg.to_dict(), "facts_file": args.facts, "manifest": manifest})
        locate.plot_average(avg, out / "average.png")
    print(f"average indirect effect over {avg.n_facts} facts the model answers correctly "
          f"(of {avg.n_tried} tried), {avg.seconds:.0f} s")
    print("layer " + "".join(f"{k + '@subj':>12}{k + '@last':>12}" for k in kinds))
    for layer in range(len(avg.effects[kinds[0]]["last_subject"])):
        print(f"{layer:>5} " + "".join(f"{avg.effects[k]['last_subject'][layer]:>12.4f}"
                                      f"{avg.effects[k]['last'][layer]:>12.4f}" for k in kinds))
    if "mlp" in kinds:
        print(f"peak of the MLP effect at the last subject token: layer {avg.peak('mlp')} "
              "(what --layers auto chooses)")
    print(f"-> {args.out}")
    return 0


def cmd_demo(args) -> int:
    from . import demo

    t0 = time.perf_counter()
    print(f"loading {args.model} (the first run fetches and converts it, once) ...")
    model, tok = _load(args)
    loaded = time.perf_counter() - t0
    timings = demo.run(model, tok)
    total = time.perf_counter() - t0
    print(f"\ndemo: {total:.0f} s in all (loading {loaded:.0f} s, the edit's one-time preparation "
          f"{timings['prepare_s']:.0f} s, the edit {timings['edit_s']:.0f} s, forgetting {timings['forget_s']:.0f} s, "
          f"the rest showing and checking); everything slow is cached for the next run")
    return 0


def _eval_settings(args):
    from ..core.config import ConfigError
    from ..evaluating.tofu import EvalSettings

    if args.max_new_tokens < 1 or args.batch_size < 1 or args.generation_batch_size < 1:
        raise ConfigError("--max-new-tokens, --batch-size and --generation-batch-size must be at least 1")
    return EvalSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                        generation_batch_size=args.generation_batch_size)


def _tofu_task(args):
    from ..core.config import ConfigError
    from ..evaluating.tofu import make_task

    try:
        return make_task(args.split, args.authors, data=args.tofu_data, eval_limit=args.eval_limit,
                         forget_authors=args.forget_authors)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def cmd_eval(args) -> int:
    from ..core.files import atomic_directory

    _check_out(args)
    if args.suite == "counterfact":
        return _eval_counterfact(args)
    from ..evaluating.report import write_tofu
    from ..evaluating.tofu import attach_reference, evaluate_tofu, read_reference

    task = _tofu_task(args)  # data problems fail before the model loads
    settings = _eval_settings(args)
    reference = source = None
    if args.retain_ref:
        ref_path = Path(args.retain_ref)
        if ref_path.suffix == ".json" or (ref_path / "report.json").is_file():
            reference, source = read_reference(ref_path), str(ref_path)
    model, tok = _load(args)
    if args.retain_ref and reference is None:  # a retain model: evaluate it on the same task (cached)
        from ..core.models import load_model

        ref_model, ref_tok = load_model(args.retain_ref, dtype=args.dtype, device=args.device,
                                        trust_remote_code=args.trust_remote_code)
        reference = evaluate_tofu(ref_model, ref_tok, task, settings, name="retain", use_cache=not args.no_cache)
        source = args.retain_ref
        del ref_model
    report = evaluate_tofu(model, tok, task, settings, name=args.model, use_cache=not args.no_cache)
    rows = {args.model: report}
    if reference is not None:
        attach_reference(report, reference, source)
        rows["retain (reference)"] = attach_reference(json.loads(json.dumps(reference)), reference, source)
    with atomic_directory(Path(args.out), overwrite=args.overwrite) as out:
        write_tofu(out, report, rows, f"TOFU evaluation of {args.model}", reference=reference)
    a = report["aggregates"]
    print(Path(args.out, "report.md").read_text().split("\n## Data")[0])
    print(f"forget quality: {a['forget_quality']['value'] if a['forget_quality']['value'] is not None else 'n/a'}"
          f"; model utility: {a['model_utility']}; report: {Path(args.out) / 'report.md'}")
    return 0


def _eval_counterfact(args) -> int:
    from ..core.config import ConfigError
    from ..core.files import atomic_directory, atomic_write_text, write_json
    from ..editing.requests import numbered_requests
    from ..evaluating.metrics import counterfact_suite

    if not args.facts:
        raise ConfigError("--suite counterfact needs --facts FILE")
    numbered = numbered_requests(args.facts, limit=args.limit)
    requests = [r for _, r in numbered]
    if not any(r.target_true for r in requests):
        raise ConfigError(f"{args.facts}: no request has target_true (the model's original answer), "
                          "so efficacy and specificity cannot be compared")
    model, tok = _load(args)
    _check_requests_fit(model, tok, args.facts, numbered)
    report = counterfact_suite(model, tok, requests)
    report.update({"model": args.model, "facts": str(args.facts), "requests": len(requests)})
    a = report["aggregates"]
    md = (f"# CounterFact evaluation of {args.model}\n\n{len(requests)} requests from `{args.facts}`\n\n"
          "| efficacy | generalisation | specificity | fluency | perplexity (generic text) |\n|---|---|---|---|---|\n"
          + "| " + " | ".join("n/a" if a[k] is None else f"{a[k]:.3f}"
                              for k in ("efficacy", "generalisation", "specificity", "fluency", "perplexity"))
          + " |\n\n"
          "Efficacy / generalisation: share of prompts / paraphrases where P(target_new) > P(target_true); "
          "specificity: share of neighbourhood prompts where the true object still wins (ROME §4.2).\n")
    with atomic_directory(Path(args.out), overwrite=args.overwrite) as out:
        write_json(out / "report.json", report)
        atomic_write_text(out / "report.md", md)
    print(md)
    return 0


def cmd_tofu(args) -> int:
    from ..core.config import ConfigError, load_config
    from ..core.files import atomic_directory
    from ..core.models import ALIASES
    from ..evaluating.report import write_tofu
    from ..evaluating.tofu_protocol import _recipe_name, run_tofu
    from ..unlearning.finetune import FinetuneConfig
    from ..unlearning.methods import get_unlearner

    _check_out(args)
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    alias = ALIASES.get(args.model)
    try:  # every recipe and --set is checked before hours of work
        load_config(FinetuneConfig, "finetune", recipe=args.finetune_recipe,
                    model_recipe=alias.recipe if alias else None, sets=args.finetune_sets)
        for m in methods:
            spec = get_unlearner(m)
            load_config(spec.config, m, recipe=args.recipe or _recipe_name(m, args.model),
                        model_recipe=alias.recipe if alias else None, sets=args.sets)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    task = _tofu_task(args)
    t0 = time.perf_counter()
    result = run_tofu(args.model, task, methods, finetune_sets=args.finetune_sets,
                      finetune_recipe=args.finetune_recipe, unlearn_recipe=args.recipe, unlearn_sets=args.sets,
                      settings=_eval_settings(args), device=args.device, dtype=args.dtype,
                      holdout_stop=not args.no_holdout_stop)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    rows = result["rows"]
    with atomic_directory(Path(args.out), overwrite=args.overwrite) as out:
        write_tofu(out, result, rows, f"TOFU ({args.split}) on {args.model}", reference=rows["retain"],
                   notes=[f"whole protocol: {result['seconds']:.0f} s"]
                   + [f"{name}: {info.get('seconds')} s" for name, info in result["runs"].items()])
    print(Path(args.out, "report.md").read_text().split("\n## Data")[0])
    print(f"whole protocol in {result['seconds']:.0f} s; report: {Path(args.out) / 'report.md'}")
    return 0


def cmd_audit(args) -> int:
    from ..auditing.audit import AuditConfig, audit, write_audit
    from ..core.config import build_config, parse_set
    from ..core.files import atomic_directory
    from ..core.models import load_model
    from ..evaluating.tofu import read_reference
    from ..unlearning.items import numbered_items

    numbered = {"facts": numbered_items(args.facts, limit=args.limit)}  # every input is checked before loading models
    for name in ("retain", "holdout"):
        if getattr(args, name):
            numbered[name] = numbered_items(getattr(args, name))
    forget_items = [x for _, x in numbered["facts"]]
    retain_items = [x for _, x in numbered["retain"]] if "retain" in numbered else None
    holdout_items = [x for _, x in numbered["holdout"]] if "holdout" in numbered else None
    config = build_config(AuditConfig, parse_set(args.sets), "--set") if args.sets else AuditConfig()
    retain_report = None
    if args.retain_ref and args.retain_ref.endswith(".json"):
        retain_report = read_reference(args.retain_ref)
    _check_out(args)
    model, tok = _load(args)
    for name, rows in numbered.items():
        _check_items_fit(model, tok, getattr(args, name), rows)
    original, _ = load_model(args.original, dtype=args.dtype, device=args.device,
                             trust_remote_code=args.trust_remote_code)
    retain_model = None
    if args.retain_ref and retain_report is None:
        retain_model, _ = load_model(args.retain_ref, dtype=args.dtype, device=args.device,
                                     trust_remote_code=args.trust_remote_code)
    t0 = time.perf_counter()
    report = audit(model, original, tok, forget_items, retain_items=retain_items, holdout_items=holdout_items,
                   retain_model=retain_model, retain_report=retain_report, config=config)
    report.update({"model": args.model, "original": args.original, "retain_ref": args.retain_ref,
                   "facts": str(args.facts), "seconds": round(time.perf_counter() - t0, 1)})
    with atomic_directory(Path(args.out), overwrite=args.overwrite) as out:
        write_audit(out, report, f"Audit of {args.model} on {Path(args.facts).name}")
    print(Path(args.out, "audit.md").read_text().split("\n## Utility guard")[0])
    print(f"audit in {report['seconds']:.0f} s -> {args.out}")
    return 0
