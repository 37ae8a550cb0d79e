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
import os
import signal
import sys
import threading

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


INTERRUPTED = "llm-edit: interrupted; nothing was written"


def _leave_during_start_up(signum, frame) -> None:
    # Start-up only imports (torch, several seconds) and parses: nothing to clean up. Raising
    # KeyboardInterrupt here instead can land in importlib's lock callbacks, where CPython prints
    # "Exception ignored ... Traceback" and carries on as if nothing happened.
    os.write(2, (INTERRUPTED + "\n").encode())
    os._exit(130)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    if threading.current_thread() is not threading.main_thread():  # signal handlers: main thread only
        return build_parser().parse_args(argv)
    signal.signal(signal.SIGINT, _leave_during_start_up)
    try:
        return build_parser().parse_args(argv)
    finally:  # the work proper: Ctrl-C raises KeyboardInterrupt, so atomic writes clean up
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parse(argv)
        return importlib.import_module(f".{args.command}", __name__).run(args)
    except KeyboardInterrupt:  # first: the clause below imports modules, which an interrupt may have cut short
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except _bad_input_errors() as e:
        print(f"llm-edit: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def entry() -> None:
    """The console script and ``python -m llm_edit``: ``main()``, then an exit Ctrl-C cannot garble."""
    status = main()
    # The work is done (or was interrupted and cleaned up): a Ctrl-C during the interpreter's
    # shutdown would only turn a finished run into a signal death with no message.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if status == 130:
        # CPython remembers an interrupt that landed inside C-run start-up code (torch's import)
        # and kills itself with SIGINT at exit even though main() handled it; leave without that.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(status)
