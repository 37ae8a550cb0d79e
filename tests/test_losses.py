"""Closed-form checks of the unlearning losses (llm_edit.unlearning.losses)."""
import math

import pytest
import torch

from llm_edit.unlearning import losses


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_nll_and_gradient_ascent_are_per_sequence_means():
    # sequences with log-probs -2 over 2 tokens and -6 over 3 tokens: per-token NLL 1 and 2
    assert losses.nll(t(-2.0, -6.0), t(2, 3)).item() == pytest.approx(1.5)
    assert losses.grad_ascent(t(-2.0, -6.0), t(2, 3)).item() == pytest.approx(-1.5)


@pytest.mark.parametrize("beta", [0.1, 1.0, 2.5])
def test_npo_at_the_reference_is_two_over_beta_log_two(beta):
    logp = t(-3.0, -0.5, -10.0)
    assert losses.npo(logp, logp.clone(), beta).item() == pytest.approx(2 / beta * math.log(2))


def test_npo_hand_value_and_limits():
    # log ratio -1, beta 1: -(2) log sigma(1)
    assert losses.npo(t(-3.0), t(-2.0), 1.0).item() == pytest.approx(-2 * math.log(1 / (1 + math.exp(-1))))
    assert losses.npo(t(-1000.0), t(-1.0), 0.1).item() == pytest.approx(0.0, abs=1e-10)  # forgotten: no push
    # its gradient is gradient ascent's scaled by 2 pi^b / (pi^b + ref^b): 1 at the reference
    logp = t(-2.0).requires_grad_()
    losses.npo(logp, t(-2.0), 0.1).backward()
    assert logp.grad.item() == pytest.approx(1.0)


def test_simnpo_closed_form():
    assert losses.simnpo(t(0.0), t(4), 2.5, 0.0).item() == pytest.approx(2 / 2.5 * math.log(2))
    # log-prob -2 over 2 tokens, beta 1, gamma 0.5: -(2) log sigma(1 - 0.5)
    expected = -2 * math.log(1 / (1 + math.exp(-0.5)))
    assert losses.simnpo(t(-2.0), t(2), 1.0, 0.5).item() == pytest.approx(expected)


def test_dpo_closed_form():
    assert losses.dpo(t(-1.0), t(-2.0), t(-1.0), t(-2.0), 0.1).item() == pytest.approx(math.log(2))
    # margin (−1 − −2) − (−3 − −2) = 2, beta 0.5: −log sigma(1)
    assert losses.dpo(t(-1.0), t(-3.0), t(-2.0), t(-2.0), 0.5).item() == pytest.approx(
        -math.log(1 / (1 + math.exp(-1))))


def test_kl_is_zero_at_the_reference_and_counts_answer_tokens_only():
    logits = torch.randn(2, 4, 5, dtype=torch.float64)
    labels = torch.tensor([[-100, 1, 2, -100], [-100, -100, 3, -100]])
    assert losses.kl_to_reference(logits, logits, labels).item() == pytest.approx(0.0, abs=1e-12)
    # one sequence, one answer position, two-word vocabulary: p_ref = (0.5, 0.5), q = (0.8, 0.2)
    ref = torch.zeros(1, 3, 2, dtype=torch.float64)
    cur = torch.zeros(1, 3, 2, dtype=torch.float64)
    cur[0, 1] = torch.log(t(0.8, 0.2))
    cur[0, 0] = torch.log(t(0.99, 0.01))  # a prompt position: must not count
    labels = torch.tensor([[-100, 0, -100]])
    expected = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert losses.kl_to_reference(cur, ref, labels).item() == pytest.approx(expected)


def test_rmu_terms_are_masked_mean_squared_distances():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 5.0]]])
    control = torch.tensor([1.0, 2.0])
    # token 0: ((0)^2 + (-1)^2)/2 = 0.5; token 1 is masked out
    assert losses.rmu_forget(hidden, control, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.5)
    assert losses.rmu_retain(hidden, hidden + 2, torch.tensor([[1.0, 1.0]])).item() == pytest.approx(4.0)
