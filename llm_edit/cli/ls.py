"""``llm-edit ls``: what can be chosen by name."""
from __future__ import annotations

import argparse

HELP = "list methods, recipes, model aliases or evaluation suites"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..catalog import KINDS

    p.add_argument("what", choices=KINDS, help="which registry to list")


def run(args) -> int:
    from ..catalog import listing

    print(listing(args.what))
    return 0
