"""Value optimisation batched across requests gives each request what it gets alone."""
import pytest
import torch

from llm_edit.arch import arch_of
from llm_edit.facts import parse_request
from llm_edit.kv import context_templates, optimise_values

REQUESTS = [{"prompt": "{} is in", "subject": "Eiffel Tower", "target_new": "Rome", "target_true": "Paris"},
            {"prompt": "{} was written by", "subject": "Hamlet", "target_new": "Goethe", "target_true": "Shakespeare"},
            {"prompt": "The {} plays", "subject": "Lakers", "target_new": "soccer", "target_true": "basketball"}]


@pytest.mark.parametrize("max_rows", [3, 100])  # one request's prompts split over chunks, or all in one
@pytest.mark.parametrize("objective", ["insert", "suppress"])
def test_batched_values_equal_one_at_a_time(tiny, objective, max_rows):
    model, tok = tiny("llama")
    requests = [parse_request(r) for r in REQUESTS]
    contexts = context_templates(model, tok, [3], 2, 0)
    name = arch_of(model).mlp_out.format(1)
    # thresholds where, on this random model, requests stop at different steps (or never)
    kw = dict(steps=10, lr=0.5, kl_factor=0.0625, weight_decay=0.1, clamp_norm_factor=4.0, kl_prompts=["{} is a"],
              nll_stop=8.4, objective=objective, stop_prob=5e-4)
    together = optimise_values(model, tok, name, requests, contexts, max_rows=max_rows, **kw)
    alone = [optimise_values(model, tok, name, [r], contexts, **kw)[0] for r in requests]
    assert len({v.steps for v in together}) > 1
    for a, b in zip(together, alone):
        assert a.steps == b.steps
        # the same sums in another order: float rounding only, which ten Adam steps amplify a little
        assert torch.allclose(a.delta, b.delta, atol=1e-3)
        assert abs(a.nll_after - b.nll_after) < 1e-4
