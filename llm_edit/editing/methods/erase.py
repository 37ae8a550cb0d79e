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
    # ``llm_edit.forget``: this many shipped known facts per forgotten fact that share its object or
    # relation (the training half, as unlearners' protect_neighbours) are kept where they are: their
    # keys go to the solve as preserved keys (methods that preserve: memit-erase)
    protect_neighbours: int = 0

    def validate_erase(self) -> None:
        if self.erase_objective not in ("suppress", "neutral"):
            raise ValueError(f"erase_objective must be 'suppress' or 'neutral', got {self.erase_objective!r}")
        if not 0 < self.erase_stop_prob < 1:
            raise ValueError("erase_stop_prob must be between 0 and 1")
        if not self.neutral_target.strip():
            raise ValueError("neutral_target must not be empty")
        if getattr(self, "own_questions", False):
            raise ValueError("own_questions is for insertions: an erasure's forms already ask MQuAKE's questions")
        if self.protect_neighbours < 0:
            raise ValueError("protect_neighbours must be >= 0")


def value_objective(config, requests: list, tok=None) -> dict:
    """Keyword arguments of ``values.optimise_values`` for ``config``'s objective: ROME/MEMIT's
    insertion of ``target_new`` unless the config is an erasure's; with ``expand: forms``, each
    request's derived forms (``core.forms``: an erasure's include MQuAKE's questions, an
    insertion's do not, since they judge insertions in ``evaluating.edit_forms``; with
    ``own_questions`` an insertion's include llm-edit's own question wording instead)."""
    erase = isinstance(config, EraseOptions)
    out: dict = {"objective": "insert"}
    if erase:
        out["targets"] = [config.neutral_target] * len(requests)
        if config.erase_objective == "suppress":
            out = {"objective": "suppress", "stop_prob": config.erase_stop_prob}
    if config.expand == "forms":
        from ...core.forms import fact_forms

        chat = bool(getattr(tok, "chat_template", None))
        questions = "mquake" if erase else "own" if config.own_questions else "none"
        out["forms"] = [fact_forms(r.prompt, r.relation_id, chat=chat, questions=questions) for r in requests]
    return out
