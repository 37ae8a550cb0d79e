"""Edit requests: one frozen dataclass, read from and written to JSON Lines.

Native shape, one object per line::

    {"prompt": "The {} is located in the city of", "subject": "Eiffel Tower",
     "target_new": "Rome", "target_true": "Paris",
     "paraphrase_prompts": ["The Eiffel Tower stands in the city of"],
     "neighborhood": [{"prompt": "The Louvre is located in the city of", "target": "Paris"}],
     "portability": [{"prompt": "The Eiffel Tower is located in the country of", "target": "Italy"}]}

``portability`` (optional): one-hop consequences of the rewrite and their answers *after* it
(EasyEdit's name; Yao et al. 2023), scored by generation (``evaluating.edit_forms``).

``prompt`` holds ``{}`` where the subject goes, or contains the subject verbatim (its first
occurrence is taken). Targets are written without a leading space; the tokenizer step adds it.
Two other shapes load as they are, so users can bring their files:

* EasyEdit's flat CounterFact (``target_new``/``ground_truth`` strings, one ``rephrase_prompt``,
  one ``locality_prompt`` with ``locality_ground_truth``);
* ROME's nested CounterFact (``requested_rewrite`` with ``target_new: {"str": ...}``,
  ``paraphrase_prompts``, ``neighborhood_prompts``).

A ``.json`` file may hold one JSON array of such objects instead of one object per line.
Every problem is reported as ``FactFileError`` naming the file, the line (the array index
+ 1 for a ``.json`` array) and the field.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

from ..core.files import FactFileError, parsed_records


@dataclass(frozen=True)
class Neighbor:
    prompt: str
    target: str


@dataclass(frozen=True)
class EditRequest:
    """One fact to insert or rewrite: ``prompt`` (a template with ``{}``) + ``subject`` -> ``target_new``."""

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood: tuple[Neighbor, ...] = field(default_factory=tuple)
    relation_id: str | None = None  # Wikidata's (CounterFact, ROME's known facts): its question forms
    portability: tuple[Neighbor, ...] = ()  # one-hop probes: prompt -> the answer the rewrite implies

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.replace("{}", self.subject, 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["paraphrase_prompts"] = list(self.paraphrase_prompts)
        d["neighborhood"] = [asdict(n) for n in self.neighborhood]
        d["portability"] = [asdict(n) for n in self.portability]
        if not d["portability"]:
            del d["portability"]
        for optional in ("target_true", "relation_id"):
            if d[optional] is None:
                del d[optional]
        return d


_NATIVE = {"prompt", "subject", "target_new", "target_true", "paraphrase_prompts", "neighborhood", "relation_id",
           "portability"}
_EASYEDIT = {"prompt", "subject", "target_new", "ground_truth", "rephrase_prompt",
             "locality_prompt", "locality_ground_truth", "case_id", "portability", "locality"}
_ROME_TOP = {"case_id", "pararel_idx", "requested_rewrite", "paraphrase_prompts",
             "neighborhood_prompts", "attribute_prompts", "generation_prompts"}
_ROME_REWRITE = {"prompt", "subject", "target_new", "target_true", "relation_id"}


class _Fields:
    """Reads one record's fields, failing with the file, line and field's name."""

    def __init__(self, source: str, line: int | None):
        self.source, self.line = source, line

    def fail(self, field_name: str | None, message: str):
        raise FactFileError(self.source, self.line, field_name, message)

    def text(self, d: Mapping, key: str, *, required: bool = True, name: str | None = None) -> str | None:
        name = name or key
        if key not in d or d[key] is None:
            if required:
                self.fail(name, "is missing")
            return None
        value = d[key]
        if isinstance(value, Mapping) and "str" in value:  # ROME's {"str": ..., "id": ...}
            value = value["str"]
        if not isinstance(value, str):
            self.fail(name, f"must be a string, got {type(value).__name__}")
        if not value.strip():
            self.fail(name, "is empty")
        return value

    def strings(self, value: Any, name: str) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            self.fail(name, "must be a list of non-empty strings")
        return tuple(value)

    def unknown(self, d: Mapping, allowed: set[str], prefix: str = "") -> None:
        extra = sorted(set(d) - allowed)
        if extra:
            self.fail(prefix + extra[0], f"is not a known field (known: {', '.join(sorted(allowed))})")


class _Parsed(NamedTuple):
    prompt: str
    subject: str
    target_new: str
    target_true: str | None
    paraphrases: tuple[str, ...]
    neighborhood: tuple[Neighbor, ...]
    relation_id: str | None = None
    portability: tuple[Neighbor, ...] = ()


def _rome_shape(obj: Mapping, f: _Fields) -> _Parsed:
    """ROME's nested CounterFact record."""
    f.unknown(obj, _ROME_TOP)
    rewrite = obj["requested_rewrite"]
    if not isinstance(rewrite, Mapping):
        f.fail("requested_rewrite", "must be an object")
    f.unknown(rewrite, _ROME_REWRITE, "requested_rewrite.")
    parsed = _Parsed(f.text(rewrite, "prompt", name="requested_rewrite.prompt"),
                     f.text(rewrite, "subject", name="requested_rewrite.subject"),
                     f.text(rewrite, "target_new", name="requested_rewrite.target_new"),
                     f.text(rewrite, "target_true", required=False, name="requested_rewrite.target_true"),
                     f.strings(obj.get("paraphrase_prompts", []), "paraphrase_prompts"), ())
    target_true = parsed.target_true
    neighbors = f.strings(obj.get("neighborhood_prompts", []), "neighborhood_prompts")
    if neighbors and target_true is None:
        f.fail("requested_rewrite.target_true", "is needed to score neighborhood_prompts")
    return parsed._replace(neighborhood=tuple(Neighbor(p, target_true) for p in neighbors),
                           relation_id=f.text(rewrite, "relation_id", required=False,
                                              name="requested_rewrite.relation_id"))


def _easyedit_shape(obj: Mapping, f: _Fields) -> _Parsed:
    f.unknown(obj, _EASYEDIT)
    parsed = _Parsed(f.text(obj, "prompt"), f.text(obj, "subject"), f.text(obj, "target_new"),
                     f.text(obj, "ground_truth", required=False),
                     f.strings(obj.get("rephrase_prompt") or [], "rephrase_prompt"), ())
    if obj.get("locality_prompt"):
        loc_target = f.text(obj, "locality_ground_truth")
        parsed = parsed._replace(neighborhood=(Neighbor(f.text(obj, "locality_prompt"), loc_target),))
    return parsed


def _native_shape(obj: Mapping, f: _Fields) -> _Parsed:
    f.unknown(obj, _NATIVE)
    parsed = _Parsed(f.text(obj, "prompt"), f.text(obj, "subject"), f.text(obj, "target_new"),
                     f.text(obj, "target_true", required=False),
                     f.strings(obj.get("paraphrase_prompts", []), "paraphrase_prompts"), ())
    return parsed._replace(neighborhood=_prompt_targets(obj, "neighborhood", f),
                           portability=_prompt_targets(obj, "portability", f),
                           relation_id=f.text(obj, "relation_id", required=False))


def _prompt_targets(obj: Mapping, key: str, f: _Fields) -> tuple[Neighbor, ...]:
    raw = obj.get(key, [])
    if not isinstance(raw, list):
        f.fail(key, "must be a list of {prompt, target} objects")
    items = []
    for i, n in enumerate(raw):
        if not isinstance(n, Mapping) or set(n) != {"prompt", "target"}:
            f.fail(f"{key}[{i}]", "must be an object with exactly 'prompt' and 'target'")
        items.append(Neighbor(f.text(n, "prompt", name=f"{key}[{i}].prompt"),
                              f.text(n, "target", name=f"{key}[{i}].target")))
    return tuple(items)


def parse_request(obj: Any, source: str = "<request>", line: int | None = None) -> EditRequest:
    """Validate one object of any supported shape and return an ``EditRequest``."""
    if isinstance(obj, EditRequest):
        return obj
    f = _Fields(source, line)
    if not isinstance(obj, Mapping):
        f.fail(None, f"expected a JSON object, got {type(obj).__name__}")
    if "requested_rewrite" in obj:
        parsed = _rome_shape(obj, f)
    elif "ground_truth" in obj or "rephrase_prompt" in obj or "locality_prompt" in obj:
        parsed = _easyedit_shape(obj, f)
    else:
        parsed = _native_shape(obj, f)
    prompt, subject, target_new, target_true = parsed.prompt, parsed.subject, parsed.target_new, parsed.target_true
    prompt = _template(prompt, subject, f)
    if target_true is not None and target_true.strip() == target_new.strip():
        f.fail("target_new", f"equals target_true ({target_true!r}): nothing to rewrite")
    return EditRequest(prompt, subject, target_new.strip(), target_true.strip() if target_true else None,
                       parsed.paraphrases, parsed.neighborhood, parsed.relation_id, parsed.portability)


def parse_preserved(obj: Any, source: str = "<preserve>") -> EditRequest:
    """A fact to preserve (``edit(preserve=...)``): only where its key is read matters, so a
    native object needs ``prompt`` and ``subject`` but no ``target_new``; any other shape or an
    ``EditRequest`` goes through ``parse_request``."""
    if not isinstance(obj, Mapping) or "target_new" in obj or "requested_rewrite" in obj:
        return parse_request(obj, source)
    f = _Fields(source, None)
    f.unknown(obj, _NATIVE)
    prompt, subject = f.text(obj, "prompt"), f.text(obj, "subject")
    target_true = f.text(obj, "target_true", required=False)
    return EditRequest(_template(prompt, subject, f), subject, "", target_true.strip() if target_true else None,
                       relation_id=f.text(obj, "relation_id", required=False))


def _template(prompt: str, subject: str, f: _Fields) -> str:
    """``prompt`` with ``{}`` where the subject goes (given, or the subject's first occurrence)."""
    if prompt.count("{}") > 1:
        f.fail("prompt", "contains '{}' more than once")
    if "{}" not in prompt:
        if subject not in prompt:
            f.fail("subject", f"{subject!r} does not occur in the prompt {prompt!r}")
        prompt = prompt.replace(subject, "{}", 1)
    return prompt


def read_requests(path: str | Path, limit: int | None = None) -> list[EditRequest]:
    """Read and validate every request in ``path``; the first problem raises ``FactFileError``."""
    return [r for _, r in numbered_requests(path, limit)]


def numbered_requests(path: str | Path, limit: int | None = None) -> list[tuple[int, EditRequest]]:
    """``read_requests`` with each request's line (for messages about it later)."""
    return parsed_records(path, parse_request, limit, "requests")


# -- fitting the model's context -------------------------------------------------------------


def request_texts(line: int | None, request: EditRequest) -> Iterator[tuple[int | None, str, str, str]]:
    """Every (line, field, prompt, continuation) an edit of ``request`` runs the model on."""
    targets = " " + max((request.target_new, request.target_true or ""), key=len)
    yield line, "prompt", request.text, targets
    for i, p in enumerate(request.paraphrase_prompts):
        yield line, f"paraphrase_prompts[{i}]", p, targets
    for i, n in enumerate(request.neighborhood):
        yield line, f"neighborhood[{i}].prompt", n.prompt, " " + n.target
    for i, n in enumerate(request.portability):
        yield line, f"portability[{i}].prompt", n.prompt, " " + n.target


def write_requests(requests: Iterable[EditRequest], path: str | Path) -> None:
    from ..core.files import atomic_write_text

    atomic_write_text(Path(path), "".join(json.dumps(r.to_dict()) + "\n" for r in requests))
