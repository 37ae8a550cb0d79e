"""Atomic file and directory output, hashes and run manifests."""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make outputs private to their writer
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_directory(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; rename it into place only if the body succeeds.

    An interrupted or failed run leaves no half-written ``final`` (the temporary folder is
    removed). With ``overwrite`` an existing ``final`` is replaced only after the new one is
    complete.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (pass --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700, likewise
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:  # --overwrite onto a file (or a link): rmtree would leave it behind
                old.unlink(missing_ok=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class OutputPathError(ValueError):
    """An output path that cannot be written; raised before any work starts."""


def check_output_dir(path: str | Path, *, overwrite: bool, flag: str = "--out") -> Path:
    """Fail now, not after an hour of work, if ``path`` cannot become an output directory.

    Checks what ``atomic_directory`` will need: a name that is not the working directory or one
    of its parents, an existing ``path`` only with ``overwrite``, and a parent that is (or can be
    made) a writable directory."""
    path = Path(path)
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if path.name in ("", ".", "..") or resolved == cwd or resolved in cwd.parents:
        raise OutputPathError(f"{flag} {str(path)!r}: would replace the working directory or one of its "
                              f"parents; name a new directory")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass --overwrite to replace it)")
    parent = resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{flag} {str(path)!r}: {parent} is a file, not a directory")
    try:  # a real probe: os.access says yes to root on a read-only mount
        os.rmdir(tempfile.mkdtemp(prefix=".llm_edit_probe-", dir=parent))
    except OSError as e:
        raise OutputPathError(f"{flag} {str(path)!r}: cannot write in {parent} ({e.strerror})") from None
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def run_info() -> dict[str, Any]:
    """What every manifest records about the software that produced it."""
    import torch
    import transformers

    from . import __version__

    return {
        "llm_edit_version": __version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python": platform.python_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
