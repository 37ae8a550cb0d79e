"""The evaluation suites ``llm-edit eval --suite`` runs, registered by name."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.registry import Registry


@dataclass(frozen=True)
class Suite:
    name: str
    summary: str


SUITES: Registry[Suite] = Registry("evaluation suite", {s.name: s for s in [
    Suite("tofu", "TOFU's forget/retain evaluation (Maini et al. 2024): forget quality, model utility, truth "
                  "ratio, ROUGE-L, membership inference and PrivLeak, extraction strength"),
    Suite("counterfact", "CounterFact's editing metrics (Meng et al. 2022): efficacy, generalisation, "
                         "specificity, fluency, perplexity on generic text"),
]})
