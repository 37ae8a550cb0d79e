"""``llm-edit validate``: check recipes strictly, as a run would, without loading a model."""
from __future__ import annotations

import argparse

HELP = "check a recipe file (or METHOD/NAME, or --all) strictly, as a run would"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", help="a recipe file, or METHOD/NAME (e.g. rome/smollm2-135m)")
    p.add_argument("--method", help="the method the recipe is for (default: the file's folder)")
    p.add_argument("--all", action="store_true", help="every shipped recipe")


def run(args) -> int:
    from ..catalog import validate_all, validate_recipe
    from ..core.config import ConfigError

    if args.all == bool(args.recipe):
        raise ConfigError("validate: give one recipe or --all")
    print("\n".join(validate_all() if args.all else [validate_recipe(args.recipe, args.method)]))
    return 0
