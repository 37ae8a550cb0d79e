"""What an erasure writes instead of a new fact: the options shared by every ``*-erase`` method.

An erasure is a locate-then-edit update whose target value, instead of making the model say
``target_new``, either makes the true object unlikely (``suppress``:
``maths.object_unlikelihood`` with the method's KL and norm constraints) or makes the model say
``neutral_target`` (``neutral``). Only the value objective differs; keys, solve and patch are
the method's own, so erasures are audited, reverted and stacked like any edit.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EraseOptions:
    erase_objective: str = "suppress"  # suppress: make the object unlikely; neutral: say neutral_target
    neutral_target: str = "unknown"
    erase_stop_prob: float = 0.02  # suppress: stop once the object's probability is below this after every prompt

    def validate_erase(self) -> None:
        if self.erase_objective not in ("suppress", "neutral"):
            raise ValueError(f"erase_objective must be 'suppress' or 'neutral', got {self.erase_objective!r}")
        if not 0 < self.erase_stop_prob < 1:
            raise ValueError("erase_stop_prob must be between 0 and 1")
        if not self.neutral_target.strip():
            raise ValueError("neutral_target must not be empty")


def value_objective(config, n_requests: int) -> dict:
    """Keyword arguments of ``kv.optimise_values`` for ``config``'s objective: ROME/MEMIT's
    insertion of ``target_new`` unless the config is an erasure's."""
    if not isinstance(config, EraseOptions):
        return {"objective": "insert"}
    if config.erase_objective == "suppress":
        return {"objective": "suppress", "stop_prob": config.erase_stop_prob}
    return {"objective": "insert", "targets": [config.neutral_target] * n_requests}
