"""Hyper-parameters: typed dataclass configs, YAML recipes, ``--set key=value`` overrides.

Validation is strict everywhere: an unknown key in a recipe, a ``--set`` or a keyword override
of the Python API fails with the known keys listed; a value of the wrong type fails naming the
key and the file. Machine facts (paths, devices, caches) are flags and environment, never
recipe keys.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    pass


def recipes_dir() -> Path:
    """``recipes/`` of a source checkout, else the copy installed as ``llm_edit.recipes``."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parent / "recipes", package / "recipes"):
        if candidate.is_dir():
            return candidate
    import llm_edit.recipes as installed  # packaged by pyproject's package-dir mapping

    return Path(installed.__path__[0])


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is Any:
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # YAML reads .nan and .inf; no setting means them
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {annotation!r}")


def build_config(cls, values: Mapping[str, Any], source: str = "<overrides>", base=None):
    """Return ``cls`` (a dataclass) from ``base`` (or defaults) updated by ``values``, strictly."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    current = dataclasses.asdict(base) if base is not None else {}
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {key!r} for {cls.__name__}{hint}; "
                              f"known keys: {', '.join(sorted(known))}")
        current[key] = _check_type(value, hints[key], f"{source}: {key}")
    try:
        config = cls(**current)
    except TypeError as e:  # a required field with no value
        raise ConfigError(f"{source}: {e}") from None
    check = getattr(config, "validate", None)
    if check is not None:
        try:
            check()
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
    return config


def read_recipe(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such recipe file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory; --recipe takes a YAML file or a recipe name") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys to values")
    return data


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["layers=[4]", "v_lr=0.5"]`` -> ``{"layers": [4], "v_lr": 0.5}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: cannot parse the value ({e})") from None
    return out


def find_recipe(method: str, recipe: str | Path | None, model_recipe: str | None) -> Path:
    """An explicit recipe path or name, else ``recipes/<method>/<model's recipe>.yaml``."""
    if recipe is not None and (Path(recipe).suffix in (".yaml", ".yml") or Path(recipe).exists()):
        return Path(recipe)
    name = recipe or model_recipe
    folder = recipes_dir() / method
    available = sorted(p.stem for p in folder.glob("*.yaml"))
    if name is None:
        raise ConfigError(f"no recipe for this model: pass --recipe FILE (or one of {available} "
                          f"from {folder})")
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no recipe {name!r} for method {method!r}; available: {available}")
    return path


def load_config(cls, method: str, *, recipe=None, model_recipe=None, sets: list[str] = (),
                overrides: Mapping[str, Any] | None = None):
    """Recipe file, then ``--set`` items, then keyword overrides, each validated strictly."""
    path = find_recipe(method, recipe, model_recipe)
    config = build_config(cls, read_recipe(path), str(path))
    if sets:
        config = build_config(cls, parse_set(list(sets)), "--set", base=config)
    if overrides:
        config = build_config(cls, dict(overrides), "keyword override", base=config)
    return config, path
