"""``llm-edit models``: the model aliases and their cache; ``--pull`` fetches one."""
from __future__ import annotations

import argparse

HELP = "list model aliases and their cache; --pull fetches one"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pull", metavar="NAME", help="fetch and convert an alias into the cache")


def run(args) -> int:
    from ..catalog import listing
    from ..core.models import ALIASES, pull

    print(pull(ALIASES.lookup(args.pull).name) if args.pull else listing("models"))
    return 0
