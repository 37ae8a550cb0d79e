"""Editing sessions: keep a model current with batches of edits made over days or weeks.

    session = EditSession.create("kb-session", model, "alphaedit", batch_size=100)
    session.edit(tok, this_weeks_facts)        # batches of 100, saved as they land
    ...
    session = EditSession.open("kb-session", model)   # next week: the same base model
    session.edit(tok, next_weeks_facts)        # still respects this week's edits

A session is a directory:

* ``session.json``: method, recipe, ``--set`` overrides and batch size (fixed when the session
  is created, so every batch is made the same way), the base model's fingerprint, and one
  entry per batch (its files, number of facts and their sha256);
* ``batches/NNNN.safetensors``: the batch's patch (an ordinary llm-edit patch file);
* ``batches/NNNN.keys.safetensors``: the batch's keys per edited module, for methods with a
  memory (AlphaEdit). The memory Σ K Kᵀ is rebuilt from them when the session is opened, in
  batch order, so it is bit for bit the memory the session had; it is never stored on its own
  and cannot disagree with the batches.

``session.json`` is replaced atomically after a batch's files are written, so an interrupted
edit leaves the session as it was (a stray batch file without an entry is ignored and later
overwritten).

Revert order: batches are undone last first (``undo``), bit for bit, and the memory loses
their keys. Undoing an earlier batch while later ones stay would leave the later ones computed
against weights and a memory that no longer exist, so it is not offered; ``llm-edit apply``
can still stack any subset of the patch files by hand.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

from ..core.files import atomic_write_bytes, write_json
from ..core.models import fingerprint
from ..core.patch import PatchError, WeightDelta, load_patch
from .contract import Prepared
from .edit import EditResult, add_gram, edit, facts_sha256
from .methods import get_method
from .requests import EditRequest, parse_request

SESSION_FILE = "session.json"
FORMAT = 1


class SessionError(ValueError):
    pass


class EditSession:
    def __init__(self, path: Path, model, info: dict, applied: list[WeightDelta], keys: list[dict]):
        self.path, self.model, self.info = path, model, info
        self.applied, self.keys = applied, keys
        self.prepared: Prepared | None = None  # the method's statistics etc., from the base model
        self.memory: dict[str, torch.Tensor] = {}
        for batch in keys:
            for name, k in batch.items():
                self.memory[name] = add_gram(self.memory.get(name), k)

    # -- creating and opening -----------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, model, method: str, *, recipe: str | None = None, sets: Iterable[str] = (),
               batch_size: int | None = None) -> "EditSession":
        """A new, empty session for ``model`` (its current weights are the session's base)."""
        path = Path(path)
        if (path / SESSION_FILE).exists():
            raise SessionError(f"{path}: a session already exists there; open it to continue")
        get_method(method)
        sets = list(sets)
        if batch_size is not None:
            sets.append(f"batch_size={batch_size}")
        info = {"format": FORMAT, "method": method, "recipe": recipe, "sets": sets,
                "base_model": getattr(model, "name_or_path", None), "base_model_fingerprint": fingerprint(model),
                "batches": []}
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / SESSION_FILE, info)
        return cls(path, model, info, [], [])

    @classmethod
    def open(cls, path: str | Path, model, tok=None) -> "EditSession":
        """Apply the session's batches, in order, to ``model``, which must be the base model the
        session started from (checked by fingerprint). With ``tok``, the method's preparation
        (key statistics, projectors, prefixes) runs first, on the base weights, as it did when
        the session started; without it, it runs at the next edit on the edited weights."""
        path = Path(path)
        file = path / SESSION_FILE
        info = read_info(path)
        if info["format"] != FORMAT:
            raise SessionError(f"{file}: session format {info['format']!r}, this llm-edit reads {FORMAT}")
        if fingerprint(model) != info["base_model_fingerprint"]:
            raise SessionError(f"{path}: the model is not the session's base model (fingerprint "
                               f"{fingerprint(model)[:16]}, the session started from "
                               f"{info['base_model_fingerprint'][:16]}); load the base model, not an edited one")
        prepared = _prepare(model, tok, info) if tok is not None and info["batches"] else None
        applied, keys = [], []
        i = 0
        try:
            for i, batch in enumerate(info["batches"]):
                delta = load_patch(path / batch["patch"])
                applied.append(delta.apply(model))
                keys.append(_load_keys(path / batch["keys"]) if batch.get("keys") else {})
        except BaseException as e:
            for delta in reversed(applied):
                delta.revert(model)
            if isinstance(e, (PatchError, OSError)):
                raise SessionError(f"{file}: batch {i + 1}: {e}") from None
            raise
        session = cls(path, model, info, applied, keys)
        session.prepared = prepared
        return session

    # -- editing ------------------------------------------------------------------------------
    @property
    def facts(self) -> int:
        return sum(b["facts"] for b in self.info["batches"])

    def edit(self, tok, requests: Iterable[EditRequest | dict], *, progress: bool = True) -> EditResult:
        """Edit ``requests`` in the session's batches; each batch is saved as it lands. If the call
        fails, every batch it applied is reverted and the session files are as before."""
        requests = [parse_request(r, f"<requests[{i}]>") for i, r in enumerate(requests)]
        result = edit(self.model, tok, requests, self.info["method"], recipe=self.info["recipe"],
                      sets=self.info["sets"], progress=progress, memory=self.memory, prepared=self.prepared)
        try:
            keys = result.batch_keys or [{} for _ in result.batches]
            entries, start = [], 0
            for delta, batch_keys in zip(result.batches, keys):
                number = len(self.info["batches"]) + len(entries) + 1
                n = len(delta.manifest["requests"])
                # the first round's batches cover the requests in order; a later round's (insert_rounds,
                # erase_rounds) edit some of them again and add no facts to the session
                first_round = start < len(requests)
                entry = {"patch": f"batches/{number:04d}.safetensors", "facts": n if first_round else 0,
                         "facts_sha256": facts_sha256([parse_request(r, "<batch>") for r in delta.manifest["requests"]]),
                         **({} if first_round else {"edited_again": n})}
                delta.save(self.path / entry["patch"])
                if batch_keys:
                    entry["keys"] = f"batches/{number:04d}.keys.safetensors"
                    _save_keys(self.path / entry["keys"], batch_keys)
                entries.append(entry)
                start += n
            info = dict(self.info, batches=self.info["batches"] + entries, last_manifest=_light(result.manifest))
            write_json(self.path / SESSION_FILE, info)
        except BaseException:
            result.revert()
            raise
        self.info = info
        self.applied += result.batches
        self.keys += keys
        self.memory = result.memory
        self.prepared = result.prepared
        return result

    def undo(self) -> None:
        """Revert the newest batch (bit for bit) and drop it from the session."""
        if not self.applied:
            raise SessionError(f"{self.path}: the session has no batch to undo")
        info = dict(self.info, batches=self.info["batches"][:-1])
        self.applied[-1].revert(self.model)
        write_json(self.path / SESSION_FILE, info)
        self.info, self.applied, self.keys = info, self.applied[:-1], self.keys[:-1]
        self.memory = {}
        for batch in self.keys:
            for name, k in batch.items():
                self.memory[name] = add_gram(self.memory.get(name), k)

    def revert_all(self) -> None:
        """Take every batch out of the model (last first); the session files stay."""
        for delta in reversed(self.applied):
            delta.revert(self.model)
        self.applied = []

    def stacked(self) -> WeightDelta:
        """Every batch as one patch."""
        return WeightDelta.stack(self.applied, {"session": str(self.path), "batches": self.info["batches"]})


def _prepare(model, tok, info: dict) -> dict:
    """The method's preparation on ``model`` (the base weights), as ``api.edit`` does it."""
    import dataclasses

    from ..core.config import load_config
    from ..core.models import model_recipe_name

    spec = get_method(info["method"])
    config, _ = load_config(spec.config, info["method"], recipe=info.get("recipe"),
                            model_recipe=model_recipe_name(model), sets=list(info["sets"]))
    prepared = spec.prepare(model, tok, config)
    prepared.config = dataclasses.asdict(config)
    return prepared


def _light(manifest: dict) -> dict:
    """The manifest without its per-fact lists (those are in each batch's patch)."""
    return {k: v for k, v in manifest.items() if k not in ("facts", "per_request", "context_templates")}


def _save_keys(path: Path, keys: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    data = save({name: k.detach().float().cpu().contiguous() for name, k in keys.items()},
                metadata={"llm_edit_session_keys": str(FORMAT)})
    atomic_write_bytes(path, data)



def read_info(path: str | Path) -> dict:
    """The session's ``session.json``, checked field by field (a corrupt file is a ``SessionError``)."""
    path = Path(path)
    file = path / SESSION_FILE
    try:
        info = json.loads(file.read_text())
    except FileNotFoundError:
        raise SessionError(f"{path}: no {SESSION_FILE}; create the session first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SessionError(f"{file}: not valid JSON ({e})") from None
    except OSError as e:
        raise SessionError(f"{file}: cannot be read ({e.strerror})") from None
    if not isinstance(info, dict):
        raise SessionError(f"{file}: expected a JSON object, got {type(info).__name__}")
    for key in ("format", "method", "sets", "base_model_fingerprint", "batches"):
        if key not in info:
            raise SessionError(f"{file}: field {key!r} is missing")
    if not isinstance(info["batches"], list) or not all(
            isinstance(b, dict) and isinstance(b.get("patch"), str) for b in info["batches"]):
        raise SessionError(f"{file}: field 'batches' must be a list of objects with a 'patch' file name")
    if not isinstance(info["sets"], list) or not isinstance(info["method"], str) \
            or not isinstance(info["base_model_fingerprint"], str):
        raise SessionError(f"{file}: fields 'method' and 'base_model_fingerprint' must be strings, 'sets' a list")
    return info


def _load_keys(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        keys = load(path.read_bytes())
    except SafetensorError as e:
        raise SessionError(f"{path}: not a valid keys file ({e})") from None
    for name, k in keys.items():
        if k.dim() != 2 or not k.is_floating_point() or not torch.isfinite(k).all():
            raise SessionError(f"{path}: {name}: keys must be a finite (n, d) float matrix")
    return keys
