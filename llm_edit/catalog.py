"""What ``llm-edit ls`` lists and ``llm-edit validate`` checks: every registry, every recipe.

It sits above the activities (it reads all of their registries) and returns text for the
console, so the two commands only parse and print.
"""
from __future__ import annotations

from pathlib import Path

KINDS = ("methods", "recipes", "models", "suites")


def listing(what: str) -> str:
    """One line per entry of a registry (``methods``: editors, erasers, unlearners)."""
    from .core.config import ConfigError, recipes_dir
    from .core.models import alias_table
    from .editing.methods import METHODS
    from .evaluating.suites import SUITES
    from .unlearning.methods import UNLEARNERS

    if what == "methods":
        rows = [(n, "eraser" if m.erases else "editor", m.summary) for n, m in METHODS.items()]
        rows += [(n, "unlearner", u.summary) for n, u in UNLEARNERS.items()]
        width = max(len(n) for n, _, _ in rows)
        return "\n".join(f"{n:<{width}}  {kind:<9}  {summary}" for n, kind, summary in rows)
    if what == "recipes":
        lines = []
        for folder in sorted(p for p in recipes_dir().iterdir() if p.is_dir() and not p.name.startswith("_")):
            lines.append(f"{folder.name:<12}  " + ", ".join(sorted(p.stem for p in folder.glob("*.yaml"))))
        return "\n".join(lines)
    if what == "models":
        rows = alias_table()
        width = max(len(r["alias"]) for r in rows)
        return "\n".join(f"{r['alias']:<{width}}  {r['description']}\n{'':<{width}}  cache: {r['cache']}" for r in rows)
    if what == "suites":
        return "\n".join(f"{s.name:<12}  {s.summary}" for s in SUITES.values())
    raise ConfigError(f"ls: unknown kind {what!r}; use one of {', '.join(KINDS)}")


def _method_config(method: str):
    from .editing.methods import METHODS
    from .unlearning.finetune import FinetuneConfig
    from .unlearning.methods import UNLEARNERS

    if method == "finetune":
        return FinetuneConfig
    if method in METHODS:
        return METHODS[method].config
    return UNLEARNERS.lookup(method).config  # unknown: ConfigError naming the known ones


def validate_recipe(recipe: str, method: str | None = None) -> str:
    """Check a recipe exactly as a run would (``load_config``: unknown keys, types, each config's
    own ``validate``); ``recipe`` is a file (its folder names the method unless ``method`` does)
    or ``METHOD/NAME``. Returns the summary line; raises ``ConfigError`` on the first problem."""
    from .core.config import ConfigError, load_config, recipes_dir

    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") or path.exists():
        method = method or path.resolve().parent.name
    else:  # rome/smollm2-135m
        folder, _, name = recipe.partition("/")
        if not name:
            raise ConfigError(f"validate: {recipe!r} is neither a recipe file nor METHOD/NAME")
        method, path = method or folder, recipes_dir() / folder / f"{name}.yaml"
    config, source = load_config(_method_config(method), method, recipe=path)
    keys = len(config.__dataclass_fields__)
    return f"{source}: valid {method} recipe ({keys} keys, every one checked as at run time)"


def validate_all() -> list[str]:
    """``validate_recipe`` of every shipped recipe."""
    from .core.config import recipes_dir

    return [validate_recipe(str(p)) for p in sorted(recipes_dir().glob("*/*.yaml"))]
