"""Every forget/retain metric pinned on inputs small enough to compute by hand."""
import math

import pytest

from llm_edit.evaluating import tofu_metrics as M

ln = math.log


def test_normalised_probability_is_the_geometric_mean_of_token_probabilities():
    assert M.normalised_probability([ln(0.5), ln(0.125)]) == pytest.approx(0.25)


def test_truth_ratio_divides_the_geometric_mean_of_false_answers_by_the_true_one():
    # perturbed answers of probability 0.1 and 0.4: geometric mean 0.2; paraphrase 0.5
    assert M.truth_ratio([[ln(0.1)], [ln(0.4)]], [ln(0.5)]) == pytest.approx(0.4)
    # length normalisation: a two-token answer of probability 0.25 counts as 0.5
    assert M.truth_ratio([[ln(0.5), ln(0.5)]], [ln(0.5)]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        M.truth_ratio([], [ln(0.5)])


def test_truth_ratio_aggregates():
    assert M.truth_ratio_forget([0.5, 2.0, 1.0]) == pytest.approx(2 / 3)
    assert M.truth_ratio_true_better([0.25, 1.5]) == pytest.approx(0.375)


def test_relative_probability_over_the_options():
    assert M.relative_probability([ln(0.6)], [[ln(0.2)], [ln(0.2)]]) == pytest.approx(0.6)


def test_rouge_l_recall_is_lcs_over_reference_length():
    assert M.rouge_l_recall("the cat sat", "the cat sat on the mat") == pytest.approx(0.5)
    assert M.rouge_l_recall("cats sitting", "the cat sits") == pytest.approx(2 / 3)  # stemming
    assert M.rouge_l_recall("", "the cat") == 0.0


def test_forget_quality_is_the_ks_p_value():
    same = [0.1, 0.5, 0.7, 0.9, 1.3]
    assert M.forget_quality(same, same) == pytest.approx(1.0)
    # fully separated samples of 5 and 5: exact two-sided p = 2 / C(10, 5)
    assert M.forget_quality([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / 252)


def test_harmonic_mean():
    assert M.harmonic_mean([1.0, 0.5]) == pytest.approx(2 / 3)
    assert M.harmonic_mean([0.9, 0.0, 0.8]) == 0.0


def test_membership_inference_scores():
    assert M.loss_score([ln(0.5), ln(0.25)]) == pytest.approx((ln(2) + ln(4)) / 2)
    assert M.zlib_score([ln(0.5)], "aaaa") == pytest.approx(ln(2) / 12)  # zlib.compress(b"aaaa") is 12 bytes
    assert M.min_k_score([-1, -2, -3, -4, -5], 0.4) == pytest.approx(4.5)  # lowest 2 of 5
    assert M.min_k_score([-3.0], 0.4) == pytest.approx(3.0)  # at least one token
    # z = (logp - mu) / sigma = [1, -0.5]; the lowest half: -0.5
    assert M.min_k_plus_plus_score([-1, -2], [-1.5, -1], [0.5, 2.0], 0.5) == pytest.approx(0.5)


def test_membership_auc_counts_ties_as_half():
    # forget losses 1, 2; holdout 3, 2: holdout higher in 3 pairs, one tie
    assert M.membership_auc([1, 2], [3, 2]) == pytest.approx(0.875)
    assert M.membership_auc([5, 6], [1, 2]) == 0.0


def test_privleak_has_open_unlearnings_sign_and_value():
    # open-unlearning: score = 1 - AUC, ref = 1 - AUC_ref, (score - ref) / (ref + 1e-10) * 100
    assert M.privleak(0.9, 0.5) == pytest.approx(-80.0)  # (0.1 - 0.5) / 0.5: still looks trained on
    assert M.privleak(0.5, 0.5) == 0.0
    assert M.privleak(0.25, 0.5) == pytest.approx(50.0)  # (0.75 - 0.5) / 0.5: over-unlearned
    # the case: at AUC_ref = 0.5 the old formula gave -1.875 here, open-unlearning +1.875
    assert M.privleak(0.490625, 0.5) == pytest.approx(1.875)
    assert M.privleak(0.15, 0.6) == pytest.approx(112.5)  # (0.85 - 0.4) / 0.4
    assert M.privleak(0.7, 0.15) == pytest.approx(-64.70588, rel=1e-6)  # (0.3 - 0.85) / 0.85
    # the same float as open-unlearning's expression, operation for operation
    for auc, ref in [(0.9, 0.5), (0.123, 0.456), (0.15, 0.6), (0.0, 1.0)]:
        assert M.privleak(auc, ref) == ((1 - auc) - (1 - ref)) / ((1 - ref) + 1e-10) * 100


def test_memorisation():
    assert M.exact_memorisation([True, False, True, True]) == 0.75
    assert M.extraction_strength([False, True, True, True]) == 0.75  # reproduced from token 1 on
    assert M.extraction_strength([True, True, False]) == 0.0
    assert M.extraction_strength([True, True, True]) == 1.0
