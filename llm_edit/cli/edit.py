"""``llm-edit edit``."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_model_args, check_out, check_requests_fit, layers_to_sets, load, save_model

HELP = "insert or rewrite facts and write the edited model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..editing.methods import METHODS

    add_model_args(p)
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


def run(args) -> int:
    from ..core.config import load_config
    from ..core.files import atomic_directory, write_json
    from ..core.models import ALIASES
    from ..editing.edit import edit
    from ..editing.methods import get_method
    from ..editing.requests import numbered_requests
    from ..evaluating.before_after import measure_edit

    if args.out is None and args.session is None:
        from ..core.config import ConfigError

        raise ConfigError("edit needs --out (or --session, to keep the edits in a session only)")
    args.method_given, args.method = args.method is not None, args.method or "rome"
    numbered = numbered_requests(args.facts)  # validate input before anything slow
    requests = [r for _, r in numbered]
    if args.out is not None:
        check_out(args)
    spec = get_method(args.method)
    layers_to_sets(args, spec.config)
    _session_settings(args, spec)
    spec = get_method(args.method)
    alias = ALIASES.get(args.model)
    # a bad recipe or --set fails now, not after loading the model
    load_config(spec.config, args.method, recipe=args.recipe, model_recipe=alias.recipe if alias else None,
                sets=args.sets)
    model, tok = load(args)
    check_requests_fit(model, tok, args.facts, numbered)
    session = None
    if args.session is not None:
        from ..editing.session import SESSION_FILE, EditSession

        if (Path(args.session) / SESSION_FILE).exists():
            session = EditSession.open(args.session, model, tok)
            print(f"session {args.session}: {len(session.applied)} batch(es), {session.facts} fact(s) re-applied")
        else:
            session = EditSession.create(args.session, model, args.method, recipe=args.recipe, sets=args.sets)
    measured = measure_edit(model, tok, requests, (lambda: session.edit(tok, requests)) if session is not None
                            else (lambda: edit(model, tok, requests, args.method, recipe=args.recipe, sets=args.sets)),
                            evaluate=not args.no_eval)
    result, seconds, check = measured.result, measured.seconds, measured.check
    metrics_before, metrics_after = (check.before, check.after) if check else ({}, {})
    if args.out is not None:
        with atomic_directory(Path(args.out), overwrite=args.overwrite) as out:
            if not args.no_save_model:
                save_model(model, tok, out)
            result.save_patch(out / "patch.safetensors")
            write_json(out / "llm_edit_manifest.json", dict(result.manifest, edit_seconds=round(seconds, 2),
                                                             session=args.session, metrics_before=metrics_before,
                                                             metrics_after=metrics_after))
            if check:
                (out / "results.csv").write_text(check.csv())
                (out / "answers.csv").write_text(check.answers_csv())
                write_json(out / "metrics.json", {"before": metrics_before, "after": metrics_after})
    where = " -> ".join(x for x in (args.session and f"session {args.session} "
                                    f"({len(session.applied)} batches, {session.facts} facts)", args.out) if x)
    prepare = result.manifest.get("prepare_seconds") or 0.0
    editing = max(seconds - prepare, 1e-9)  # the one-time statistics are not the edit's time
    print(f"edited {len(requests)} fact(s) with {args.method} in {editing:.1f} s "
          f"({len(requests) / editing:.2f} facts/s; preparing took {prepare:.1f} s more: key statistics and "
          f"context prefixes, computed once and cached) -> {where}")
    if check:
        print(check.text())
    return 0
