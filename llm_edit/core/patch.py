"""Edits as weight deltas: apply, revert bit for bit, save, load and stack (PEFT's merge/unmerge).

A ``WeightDelta`` maps parameter names to low-rank factors with ΔW = left @ right in the
parameter's own storage layout, so applying one needs no knowledge of the architecture. A
rank-one ROME edit of a 576×1536 matrix is 8 KB on disk.

Revert semantics: ``apply`` keeps a copy of each tensor it changes; ``revert`` copies it back,
bit for bit, as long as nothing changed that tensor since (reverting stacked patches in reverse
order, last applied first, is always exact). A tensor changed since, for example by a later
patch that is still applied, is reverted by subtracting ΔW instead: exact up to floating-point
rounding, and a warning says so.

File format: one safetensors file; tensors ``<param>::left`` and ``<param>::right``; metadata
``llm_edit_patch`` = format version and ``manifest`` = JSON (base model and the sha256 of every
tensor before the edit, method, hyper-parameters, facts, versions, time).
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch

FORMAT_VERSION = "1"


class PatchError(ValueError):
    pass


class NonFiniteWeights(PatchError, FloatingPointError):
    """Applying a delta would make weights inf or NaN: a corrupt file, or an edit that diverged."""


def tensor_sha256(t: torch.Tensor) -> str:
    t = t.detach().contiguous().cpu()
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()


class WeightDelta:
    def __init__(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], manifest: dict | None = None,
                 base_sha256: dict[str, str] | None = None):
        for name, (left, right) in factors.items():
            if left.dim() != 2 or right.dim() != 2 or left.shape[1] != right.shape[0]:
                raise PatchError(f"{name}: factors must be (out, r) and (r, in), got "
                                 f"{tuple(left.shape)} and {tuple(right.shape)}")
        self.factors = {n: (l.detach().float().cpu(), r.detach().float().cpu()) for n, (l, r) in factors.items()}
        self.manifest = dict(manifest or {})
        self.base_sha256 = dict(base_sha256 or {})
        self.source: str | None = None  # the file it was loaded from, for messages
        self._originals: dict[str, torch.Tensor] = {}
        self._applied_sha256: dict[str, str] = {}

    # -- maths --------------------------------------------------------------------------------
    def dense(self, name: str) -> torch.Tensor:
        left, right = self.factors[name]
        return left @ right

    @property
    def applied(self) -> bool:
        return bool(self._originals)

    def norms(self) -> dict[str, float]:
        return {n: float(self.dense(n).norm()) for n in self.factors}

    # -- apply / revert -----------------------------------------------------------------------
    def apply(self, model: torch.nn.Module, *, check_base: bool = True) -> "WeightDelta":
        """Add ΔW to the model's weights in place; all or nothing.

        With ``check_base`` (the default) every changed tensor must match the sha256 the patch
        recorded for it: a patch without one for each tensor is refused, not applied unchecked."""
        where = f"{self.source}: " if self.source else ""
        if self.applied:
            raise PatchError(f"{where}this delta is already applied; revert it first")
        if check_base:
            missing = sorted(n for n in self.factors if not _is_sha256(self.base_sha256.get(n)))
            if missing:
                raise PatchError(f"{where}no usable base-weight sha256 for {missing[0]}"
                                 + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                                 + ", so it cannot be checked that this patch fits these weights; "
                                 "pass --no-check-base (Python: check_base=False) to apply it unchecked")
        params = {}
        for name in self.factors:
            try:
                params[name] = model.get_parameter(name)
            except AttributeError:
                raise PatchError(f"{where}the model has no parameter {name!r}: the patch was made for another "
                                 "architecture") from None
            left, right = self.factors[name]
            shape = (left.shape[0], right.shape[1])
            if tuple(params[name].shape) != shape:
                raise PatchError(f"{where}{name}: patch is {shape}, model has {tuple(params[name].shape)}")
            if check_base and tensor_sha256(params[name]) != self.base_sha256[name]:
                raise PatchError(f"{where}{name}: the model's weights differ from the ones this patch was made "
                                 "on (sha256 mismatch): another base model, or other patches applied first? "
                                 "Pass --no-check-base (Python: check_base=False) to apply it anyway")
        originals: dict[str, torch.Tensor] = {}
        try:
            with torch.no_grad():
                for name, p in params.items():
                    originals[name] = p.detach().clone()
                    new = p.float() + self.dense(name).to(p.device)
                    if not torch.isfinite(new).all():
                        raise NonFiniteWeights(f"{where}{name}: applying the patch gives non-finite weights "
                                         "(corrupt or absurdly scaled factors); the model is unchanged")
                    p.copy_(new.to(p.dtype))
        except BaseException:
            with torch.no_grad():
                for name, original in originals.items():
                    params[name].copy_(original)
            raise
        self._originals = originals
        self._applied_sha256 = {n: tensor_sha256(p) for n, p in params.items()}
        return self

    def revert(self, model: torch.nn.Module) -> None:
        """Undo ``apply``: bit for bit where the tensor is unchanged since (see module doc)."""
        if not self.applied:
            raise PatchError("this delta is not applied to a model")
        with torch.no_grad():
            for name, original in self._originals.items():
                p = model.get_parameter(name)
                if tensor_sha256(p) == self._applied_sha256[name]:
                    p.copy_(original)
                else:
                    warnings.warn(f"{name} changed after this patch was applied; reverting by "
                                  "subtraction (exact up to rounding)", stacklevel=2)
                    p.copy_((p.float() - self.dense(name).to(p.device)).to(p.dtype))
        self._originals, self._applied_sha256 = {}, {}

    # -- stacking -----------------------------------------------------------------------------
    @staticmethod
    def stack(deltas: list["WeightDelta"], manifest: dict | None = None) -> "WeightDelta":
        """One delta equal to the sum of ``deltas`` (factors concatenated along the rank).

        If they were applied in order, the result counts as applied and reverts to the weights
        before the first one."""
        factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        base: dict[str, str] = {}
        for d in deltas:
            for name, (left, right) in d.factors.items():
                if name in factors:
                    l0, r0 = factors[name]
                    factors[name] = (torch.cat([l0, left], 1), torch.cat([r0, right], 0))
                else:
                    factors[name] = (left, right)
                    if name in d.base_sha256:
                        base[name] = d.base_sha256[name]
        out = WeightDelta(factors, manifest or {"stacked": [d.manifest for d in deltas]}, base)
        if deltas and all(d.applied for d in deltas):
            for d in deltas:
                for name, original in d._originals.items():
                    out._originals.setdefault(name, original)
            for d in deltas:
                out._applied_sha256.update(d._applied_sha256)
        return out

    # -- files --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        from safetensors.torch import save

        from .files import atomic_write_bytes

        tensors = {}
        for name, (left, right) in self.factors.items():
            tensors[f"{name}::left"] = left.contiguous()
            tensors[f"{name}::right"] = right.contiguous()
        manifest = dict(self.manifest, base_sha256=self.base_sha256)
        data = save(tensors, metadata={"llm_edit_patch": FORMAT_VERSION, "manifest": json.dumps(manifest)})
        atomic_write_bytes(Path(path), data)


def load_patch(path: str | Path) -> WeightDelta:
    """Read a patch file, validating everything; a bad file raises ``PatchError`` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PatchError(f"{path}: cannot read ({e.strerror})") from None
    try:
        tensors = load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        metadata = json.loads(raw[8:8 + header_len]).get("__metadata__") or {}
    except (SafetensorError, ValueError, json.JSONDecodeError, OverflowError) as e:
        raise PatchError(f"{path}: not a valid safetensors patch file ({e})") from None
    if metadata.get("llm_edit_patch") != FORMAT_VERSION:
        raise PatchError(f"{path}: not an llm-edit patch (format {metadata.get('llm_edit_patch')!r}, "
                         f"expected {FORMAT_VERSION!r})")
    try:
        manifest = json.loads(metadata["manifest"])
    except (KeyError, json.JSONDecodeError):
        raise PatchError(f"{path}: the patch manifest is missing or malformed") from None
    factors = {}
    for key in tensors:
        name, sep, part = key.rpartition("::")
        if not sep or part not in ("left", "right"):
            raise PatchError(f"{path}: unexpected tensor {key!r}")
        if f"{name}::left" not in tensors or f"{name}::right" not in tensors:
            raise PatchError(f"{path}: {name} lacks its left or right factor")
        factors[name] = (tensors[f"{name}::left"], tensors[f"{name}::right"])
    for name, (left, right) in factors.items():
        if not (left.is_floating_point() and right.is_floating_point()):
            raise PatchError(f"{path}: {name} factors are not floating point")
        if not (torch.isfinite(left).all() and torch.isfinite(right).all()):
            raise PatchError(f"{path}: {name} holds non-finite values")
    if not isinstance(manifest, dict):
        raise PatchError(f"{path}: the patch manifest must be a JSON object, got {type(manifest).__name__}")
    base = manifest.pop("base_sha256", {})
    if not isinstance(base, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in base.items()):
        raise PatchError(f"{path}: manifest field 'base_sha256' must map parameter names to sha256 strings")
    try:
        delta = WeightDelta(factors, manifest, base)
    except PatchError as e:
        raise PatchError(f"{path}: {e}") from None
    delta.source = str(path)
    return delta


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def apply_patch(model: torch.nn.Module, path_or_delta, *, check_base: bool = True) -> WeightDelta:
    """Apply a patch file (or a ``WeightDelta``) to ``model`` in place; returns the applied delta."""
    delta = path_or_delta if isinstance(path_or_delta, WeightDelta) else load_patch(path_or_delta)
    return delta.apply(model, check_base=check_base)
