"""The ``llm-edit`` command line (also ``python -m llm_edit``): one small file per command.

Each command module has ``HELP``, ``add_arguments(parser)`` and ``run(args) -> exit status``: it
parses, calls the library, prints what the library returns. Bad input (a malformed fact file, an
unknown recipe key, a model that cannot be loaded, a corrupt patch) exits with status 2 and a
message naming the file, line and field, before any output is written. Output directories are
written atomically.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .common import EXIT_BAD_INPUT

COMMANDS = ["edit", "apply", "forget", "locate", "eval", "tofu", "audit", "demo", "models", "ls", "validate"]


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-edit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f".{name}", __name__)
        module.add_arguments(sub.add_parser(name, help=module.HELP))
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # imports torch: Ctrl-C here is handled below too
        return importlib.import_module(f".{args.command}", __name__).run(args)
    except KeyboardInterrupt:  # first: the clause below imports modules, which an interrupt may have cut short
        print("llm-edit: interrupted; nothing was written", file=sys.stderr)
        return 130
    except _bad_input_errors() as e:
        print(f"llm-edit: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
