import math

import pytest
import torch

from llm_edit.editing.objectives import clamp_norm, kl_to_initial, mean_target_nll, relative_weight_decay
from llm_edit.evaluating.metrics import ngram_entropy
from llm_edit.editing.rank_one import energy_threshold, null_space_projector, rank_one_update
from llm_edit.evaluating.metrics import summarise


def test_rank_one_update_closed_form():
    g = torch.Generator().manual_seed(0)
    d_out, d_in = 5, 7
    keys = torch.randn(200, d_in, generator=g, dtype=torch.float64)
    cov = keys.T @ keys / len(keys)
    k_star = torch.randn(d_in, generator=g, dtype=torch.float64)
    residual = torch.randn(d_out, generator=g, dtype=torch.float64)
    left, right = rank_one_update(residual, k_star, cov)
    delta_w = (left @ right).double()
    assert torch.allclose(delta_w @ k_star, residual, atol=1e-5)  # W' k* = W k* + residual
    # the update is orthogonal to every key that C says is uncorrelated with k*: ΔW C C⁻¹k*… in
    # closed form, ΔW = r (C⁻¹k*)ᵀ / (k*ᵀ C⁻¹ k*)
    u = torch.linalg.solve(cov, k_star)
    assert torch.allclose(delta_w, torch.outer(residual, u) / (u @ k_star), atol=1e-5)


def test_rank_one_update_with_preserved_keys_matches_sherman_morrison():
    """C + w ppᵀ: the update still writes the residual at k* exactly, and at p it writes
    r (pᵀC⁻¹k*) / ((1 + w pᵀC⁻¹p) (k*ᵀA⁻¹k*)), A⁻¹ by Sherman-Morrison; no keys is the plain update."""
    g = torch.Generator().manual_seed(1)
    d_out, d_in = 4, 6
    keys = torch.randn(300, d_in, generator=g, dtype=torch.float64)
    cov = keys.T @ keys / len(keys)
    k = torch.randn(d_in, generator=g, dtype=torch.float64)
    p = 0.5 * k + torch.randn(d_in, generator=g, dtype=torch.float64)  # a neighbour's key, correlated with k*
    r = torch.randn(d_out, generator=g, dtype=torch.float64)
    w = 0.5
    left, right = rank_one_update(r, k, cov, p.unsqueeze(0), w)
    delta_w = (left @ right).double()
    assert torch.allclose(delta_w @ k, r, atol=1e-5)
    ck, cp = torch.linalg.solve(cov, k), torch.linalg.solve(cov, p)
    pk, pp = p @ ck, p @ cp
    denominator = k @ ck - w * pk ** 2 / (1 + w * pp)  # k*ᵀ A⁻¹ k*
    assert torch.allclose(delta_w @ p, r * pk / ((1 + w * pp) * denominator), atol=1e-5)
    plain = (lambda lr: (lr[0] @ lr[1]).double())(rank_one_update(r, k, cov))
    assert (delta_w @ p).norm() < 0.5 * (plain @ p).norm()  # it writes less there
    for none in ((None, 0.5), (p.unsqueeze(0), 0.0), (torch.empty(0, d_in, dtype=torch.float64), 0.5)):
        assert torch.equal(torch.cat([t.flatten() for t in rank_one_update(r, k, cov, *none)]),
                           torch.cat([t.flatten() for t in rank_one_update(r, k, cov)]))


def test_write_direction_is_the_share_of_the_update_each_key_receives():
    """ΔW k = residual · (dᵀk) for any key k, with or without preserved keys; dᵀk* = 1."""
    from llm_edit.editing.rank_one import write_direction

    g = torch.Generator().manual_seed(2)
    keys = torch.randn(100, 6, generator=g, dtype=torch.float64)
    cov = keys.T @ keys / len(keys)
    k, other, r = (torch.randn(6, generator=g, dtype=torch.float64) for _ in range(3))
    r = r[:4]
    for preserved, w in ((None, 0.0), (keys[:3], 0.5)):
        left, right = rank_one_update(r, k, cov, preserved, w)
        d = write_direction(k, cov, preserved, w).double()
        assert float(d @ k) == pytest.approx(1.0, abs=1e-6)
        assert torch.allclose((left @ right).double() @ other, r * (d @ other), atol=1e-5)


def test_energy_threshold_holds_the_share_of_the_trace():
    # eigenvalues 1, 2, 3, 4 (trace 10) along the axes of a rotated basis
    basis, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    cov = basis @ torch.diag(torch.tensor([3.0, 1.0, 4.0, 2.0], dtype=torch.float64)) @ basis.T
    # 15% of the trace: the direction of eigenvalue 1 alone (the cutoff is the next eigenvalue, 2);
    # 35%: those of 1 and 2; 25%: still only 1; 5%: none fits, an empty null space
    assert energy_threshold(cov, 0.15) == pytest.approx(2.0)
    assert energy_threshold(cov, 0.35) == pytest.approx(3.0)
    assert energy_threshold(cov, 0.25) == pytest.approx(2.0)
    assert energy_threshold(cov, 0.05) == pytest.approx(1.0)
    assert float(null_space_projector(cov, energy_threshold(cov, 0.05)).trace()) == pytest.approx(0.0)
    projector = null_space_projector(cov, energy_threshold(cov, 0.35))
    assert float(projector.trace()) == pytest.approx(2.0)
    assert float(torch.trace(projector @ cov) / torch.trace(cov)) == pytest.approx(0.3)
    assert energy_threshold(cov, 1.0) == float("inf")


def test_rank_one_update_identity_covariance():
    k = torch.tensor([3.0, 4.0])
    left, right = rank_one_update(torch.tensor([1.0, 0.0]), k, None)
    assert torch.allclose(left @ right, torch.tensor([[3 / 25, 4 / 25], [0.0, 0.0]]))


def test_rank_one_update_refuses_zero_key():
    with pytest.raises(FloatingPointError):
        rank_one_update(torch.ones(2), torch.zeros(2), None)


def test_losses_closed_form():
    assert mean_target_nll(torch.tensor([-2.0, -3.0]), torch.tensor([1, 3])).item() == pytest.approx(1.5)
    p = torch.log_softmax(torch.tensor([[1.0, 2.0, 3.0]]), -1)
    assert kl_to_initial(p, p).item() == pytest.approx(0.0, abs=1e-7)
    q = torch.log(torch.tensor([[0.5, 0.5]]))
    r = torch.log(torch.tensor([[0.25, 0.75]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_to_initial(q, r).item() == pytest.approx(expected)
    assert relative_weight_decay(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 10.0])).item() == pytest.approx(0.25)
    d = torch.tensor([6.0, 8.0])
    assert clamp_norm(d, 5.0).tolist() == pytest.approx([3.0, 4.0])
    assert clamp_norm(torch.tensor([1.0]), 5.0).tolist() == [1.0]


def test_ngram_entropy_hand_computed():
    # "a b a b": bigrams ab, ba, ab -> p = 2/3, 1/3; trigrams aba, bab -> 1/2, 1/2
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    h3 = 1.0
    assert ngram_entropy(list("abab")) == pytest.approx((2 / 3 * h2 + 4 / 3 * h3) / 2)
    assert ngram_entropy(["x"] * 10) == 0.0


def test_summarise_pinned():
    rows = [
        {"kind": "prompt", "p_true": 0.1, "p_new": 0.9},
        {"kind": "prompt", "p_true": 0.6, "p_new": 0.4},
        {"kind": "paraphrase", "p_true": 0.2, "p_new": 0.3},
        {"kind": "neighborhood", "p_true": 0.7, "p_new": 0.1},
        {"kind": "neighborhood", "p_true": 0.7, "p_new": 0.1},
        {"kind": "neighborhood", "p_true": 0.1, "p_new": 0.7},
    ]
    assert summarise(rows) == {"efficacy": 0.5, "generalisation": 1.0, "specificity": pytest.approx(2 / 3)}
    assert summarise([])["efficacy"] is None
