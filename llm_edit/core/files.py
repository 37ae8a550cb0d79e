"""Files: atomic outputs, hashes, run manifests, and the records of fact files (JSON Lines or
arrays) with ``FactFileError``, which names the file, line and field of a bad record."""
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

DATA_DIR = Path(__file__).resolve().parents[1] / "data"  # files shipped with the package


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
    from importlib.metadata import PackageNotFoundError, version

    import torch
    import transformers

    try:
        __version__ = version("llm-edit")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        __version__ = "0+unknown"
    return {
        "llm_edit_version": __version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python": platform.python_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


class FactFileError(ValueError):
    def __init__(self, source: str, line: int | None, field_name: str | None, message: str):
        self.source, self.line, self.field, self.message = source, line, field_name, message
        where = source + (f":{line}" if line is not None else "")
        what = f" field '{field_name}'" if field_name else ""
        super().__init__(f"{where}:{what} {message}")


def records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, object) for each record of a JSON Lines file, a JSON array, or one JSON array per
    line (TOFU's files). For arrays the "line" is the item's 1-based position in the file."""
    source = str(path)
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FactFileError(source, None, None, "no such file") from None
    except IsADirectoryError:
        raise FactFileError(source, None, None, "is a directory; expected a JSON Lines or JSON file") from None
    except OSError as e:
        raise FactFileError(source, None, None, f"cannot be read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise FactFileError(source, None, None, f"is not UTF-8 text ({e.reason})") from None
    if raw.lstrip().startswith("["):  # JSON arrays (CounterFact and TOFU ship these)
        try:
            arrays = [json.loads(raw)]
        except json.JSONDecodeError:
            arrays = []
            for lineno, line in enumerate(raw.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    arrays.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise FactFileError(source, lineno, None, f"malformed JSON: {e.msg}") from None
                if not isinstance(arrays[-1], list):
                    raise FactFileError(source, lineno, None, "expected a JSON array on every line")
        items = [obj for array in arrays for obj in array]
        yield from ((i + 1, obj) for i, obj in enumerate(items))
        return
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise FactFileError(source, lineno, None, f"malformed JSON: {e.msg} (column {e.colno})") from None


def parsed_records(path: str | Path, parse, limit: int | None = None, what: str = "records") -> list[tuple[int, Any]]:
    """(line, ``parse(obj, source, line)``) for each record of ``path``, at most ``limit``; a file
    with none is a ``FactFileError`` ("holds no <what>")."""
    path = Path(path)
    out = []
    for lineno, obj in records(path):
        if limit is not None and len(out) >= limit:
            break
        out.append((lineno, parse(obj, str(path), lineno)))
    if not out:
        raise FactFileError(str(path), None, None, f"holds no {what}")
    return out
