"""``llm-edit apply``."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_model_args, check_out, load, save_model

HELP = "apply a patch file to a model and write the result"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--patch", required=True, action="append", help="patch file (repeat to stack, in order)")
    p.add_argument("--no-check-base", action="store_true",
                   help="apply even where the patch has no usable base-weight sha256 or it does not match")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")


def run(args) -> int:
    from ..core.files import atomic_directory, write_json
    from ..core.patch import WeightDelta, load_patch

    deltas = [load_patch(p) for p in args.patch]  # validate every file before loading the model
    check_out(args)
    model, tok = load(args)
    applied = []
    try:
        for d in deltas:
            applied.append(d.apply(model, check_base=not args.no_check_base))
    except BaseException:
        for d in reversed(applied):
            d.revert(model)
        raise
    with atomic_directory(Path(args.out), overwrite=args.overwrite) as out:
        save_model(model, tok, out)
        WeightDelta.stack(applied).save(out / "patch.safetensors")
        write_json(out / "llm_edit_manifest.json", {"base_model": args.model, "patches": args.patch,
                                                     "stacked": [d.manifest for d in deltas]})
    print(f"applied {len(deltas)} patch(es) -> {args.out}")
    return 0
