"""ROME's known facts (shipped, ``data/known_1000.json``): the facts closest to a given one.

A change to one fact damages first the facts that share its object or its relation ("the Louvre
... Paris" when "the Eiffel Tower ... Paris" is forgotten or rewritten). Both unlearning and
editing protect some of them, and the evaluations judge by others, so the known facts are split
in two halves on a hash of the subject (``known_pool``): ``train`` is what a method may protect,
``eval`` what judges it. No subject is in both.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, NamedTuple

from .files import DATA_DIR, records

KNOWN_FACTS = DATA_DIR / "known_1000.json"


def known_pool(subject: str) -> str:
    """Which half of the known facts a subject belongs to: ``train`` or ``eval``."""
    return "train" if hashlib.sha256(subject.strip().lower().encode()).digest()[0] % 2 else "eval"


def relation_tail(prompt: str, subject: str) -> str:
    """What a fact's prompt says after its subject ("is located in the city of"): the relation,
    for facts that carry no Wikidata relation id."""
    return " ".join(prompt.split(subject, 1)[-1].lower().split())


class Anchor(NamedTuple):
    """A fact whose closest known facts are wanted: its prompt with the subject filled in, the
    subject, its object (None: match the relation only) and its Wikidata relation id if any."""

    text: str
    subject: str
    obj: str | None
    relation_id: str | None


class Close(NamedTuple):
    """A known fact close to ``anchors[anchor]``, and what it shares with it."""

    anchor: int
    fact: dict  # the known fact's record: prompt, subject, attribute, relation_id, known_id
    shares: str  # "object and relation", "object" or "relation"


def known_facts(pool: str | None, source=KNOWN_FACTS) -> list[dict]:
    """The known facts of one half (``known_pool``; None: all), in file order."""
    return [obj for _, obj in records(source) if pool is None or known_pool(obj["subject"]) == pool]


def closest_known(anchors: Iterable[Anchor], per_anchor: int, pool: str | None, source=KNOWN_FACTS) -> list[Close]:
    """For each anchor in turn, up to ``per_anchor`` known facts from ``pool`` (``known_pool``;
    None: all) that share its object and relation, then its object, then its relation (the
    Wikidata id when the anchor has one, else the words after the subject). Never an anchor's
    subject, and no subject twice."""
    anchors = list(anchors)
    known = known_facts(pool, source)
    taken = {a.subject.lower() for a in anchors}
    out: list[Close] = []
    for i, a in enumerate(anchors):
        tail = relation_tail(a.text, a.subject)

        def shares(k) -> tuple[bool, bool]:
            same_relation = (k.get("relation_id") == a.relation_id if a.relation_id
                             else relation_tail(k["prompt"], k["subject"]) == tail)
            same_object = a.obj is not None and k["attribute"].strip().lower() == a.obj.strip().lower()
            return same_object, same_relation

        ranked = sorted((k for k in known if any(shares(k))), key=lambda k: (not all(shares(k)), not shares(k)[0]))
        picked = 0
        for k in ranked:
            if picked == per_anchor:
                break
            if k["subject"].lower() in taken:
                continue
            taken.add(k["subject"].lower())
            out.append(Close(i, k, {(True, True): "object and relation", (True, False): "object"}.get(
                shares(k), "relation")))
            picked += 1
    return out
