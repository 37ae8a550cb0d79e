"""One generic registry for everything chosen by name: editors, erasers, unlearners, evaluation
suites and model aliases (lm-evaluation-harness keeps one such table per kind, with ``ls``).

A ``Registry`` is a dict (name → entry) with a kind, so existing lookups and ``sorted(...)`` keep
working; ``lookup`` is the checked access: an unknown name raises ``ConfigError`` with the
known names and the closest one. ``llm-edit ls`` lists every registry.
"""
from __future__ import annotations

import difflib
from typing import Generic, TypeVar

from .config import ConfigError

T = TypeVar("T")


class Registry(dict, Generic[T]):
    def __init__(self, kind: str, entries: dict[str, T] | None = None):
        super().__init__(entries or {})
        self.kind = kind

    def register(self, name: str, entry: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self[name] = entry
        return entry

    def lookup(self, name: str) -> T:
        if name in self:
            return self[name]
        close = difflib.get_close_matches(name, list(self), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown {self.kind} {name!r}{hint}; available: {', '.join(self)}")

    def subset(self, kind: str, keep) -> "Registry[T]":
        """The entries for which ``keep(entry)`` holds, as a registry of their own."""
        return Registry(kind, {n: e for n, e in self.items() if keep(e)})
