"""Conformal threshold: ranks, refusals, and the stated guarantees checked by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from osr.export.conformal import (
    binomial_band,
    calibrate,
    conformal_band,
    conformal_p_values,
    conformal_rank,
    min_calibration_size,
    pac_rank,
)


def test_rank_is_floor_alpha_n_plus_one_and_threshold_is_kth_smallest() -> None:
    assert conformal_rank(99, 0.1) == 10
    assert conformal_rank(19, 0.05) == 1
    assert conformal_rank(18, 0.05) == 0
    scores = np.arange(99.0)[::-1]  # 98 .. 0
    result = calibrate(scores, 0.1)
    assert result.rank == 10 and result.value == 9.0
    assert result.method == "split_conformal" and result.n_calibration == 99
    assert result.marginal_false_rejection_bound == pytest.approx(0.1)


def test_refuses_too_few_calibration_images_saying_how_many() -> None:
    with pytest.raises(ValueError, match="have 10, need at least 19"):
        calibrate(np.random.default_rng(0).normal(size=10), 0.05)
    assert min_calibration_size(0.05) == 19
    assert min_calibration_size(0.1) == 9
    # PAC, k = 1 needs (1 - alpha)^n <= delta: n >= log(0.1) / log(0.95) = 44.9
    assert min_calibration_size(0.05, confidence=0.9) == 45
    with pytest.raises(ValueError, match="have 44, need at least 45"):
        calibrate(np.zeros(44), 0.05, confidence=0.9)
    with pytest.raises(ValueError, match="alpha must be in"):
        calibrate(np.zeros(100), 1.5)


def test_marginal_false_rejection_rate_over_fresh_calibrations() -> None:
    # One fresh calibration set and one fresh known image per repetition: the rejections are
    # independent Bernoulli(k / (n + 1)) draws, so their count is exactly binomial.
    rng = np.random.default_rng(1)
    repetitions, n, alpha = 20_000, 99, 0.1
    calibration = rng.normal(size=(repetitions, n))
    k = conformal_rank(n, alpha)
    thresholds = np.sort(calibration, axis=1)[:, k - 1]
    rejected = rng.normal(size=repetitions) < thresholds
    low, high = binomial_band(k / (n + 1), repetitions, level=0.999)
    assert low <= rejected.mean() <= high
    assert k / (n + 1) <= alpha


def test_fresh_draws_after_one_calibration_fall_in_the_band() -> None:
    rng = np.random.default_rng(2)
    alpha, n_cal, n_test = 0.05, 2_000, 4_000
    result = calibrate(rng.gamma(3.0, size=n_cal), alpha)
    realised = float(np.mean(rng.gamma(3.0, size=n_test) < result.value))
    low, high = conformal_band(n_cal, result.rank, n_test, level=0.99)
    assert low <= realised <= high
    b_low, b_high = binomial_band(alpha, n_test, level=0.99)
    assert b_low < alpha < b_high and b_high - b_low < high - low


def test_pac_guarantee_holds_with_stated_probability() -> None:
    rng = np.random.default_rng(3)
    draws, n, alpha, confidence = 400, 500, 0.05, 0.9
    k = pac_rank(n, alpha, confidence)
    violation_probability = stats.binom.cdf(k - 1, n, alpha)
    assert violation_probability <= 1 - confidence < stats.binom.cdf(k, n, alpha)
    # Uniform scores: the conditional false-rejection rate of threshold t is t itself.
    thresholds = np.sort(rng.random((draws, n)), axis=1)
    pac_rates = thresholds[:, k - 1]
    violations = int(np.sum(pac_rates > alpha))
    assert violations <= stats.binom.ppf(0.999, draws, violation_probability)
    assert violations / draws <= 1 - confidence + 0.05
    # The plain split-conformal threshold is only right on average: it overshoots alpha often.
    split_rates = thresholds[:, conformal_rank(n, alpha) - 1]
    assert np.mean(split_rates > alpha) > 0.3
    assert calibrate(thresholds[0], alpha, confidence=confidence).method == "split_conformal_pac"


def test_per_class_thresholds_by_predicted_class() -> None:
    rng = np.random.default_rng(4)
    n_per_class, shifts = 400, np.array([0.0, 2.0, 5.0])
    predicted = np.repeat(np.arange(3), n_per_class)
    scores = rng.normal(size=len(predicted)) + shifts[predicted]
    result = calibrate(scores, 0.1, predicted=predicted, num_classes=3)
    assert result.per_class_n == (n_per_class,) * 3
    assert result.class_thresholds == list(result.per_class)
    fresh_predicted = np.repeat(np.arange(3), 5_000)
    fresh = rng.normal(size=len(fresh_predicted)) + shifts[fresh_predicted]
    rejected = fresh < np.asarray(result.per_class)[fresh_predicted]
    for c in range(3):
        rank = conformal_rank(n_per_class, 0.1)
        low, high = conformal_band(n_per_class, rank, 5_000, level=0.999)
        assert low <= rejected[fresh_predicted == c].mean() <= high
    with pytest.raises(ValueError, match="predicted as class 2 for alpha=0.1: have 5, need at least 9"):
        calibrate(scores[:805], 0.1, predicted=predicted[:805], num_classes=3)


def test_p_value_agrees_with_threshold() -> None:
    rng = np.random.default_rng(5)
    calibration = rng.normal(size=199)
    result = calibrate(calibration, 0.05)
    test = rng.normal(size=5_000)
    p = conformal_p_values(calibration, test)
    assert np.array_equal(test < result.value, p <= result.rank / (len(calibration) + 1))
    assert p.min() >= 1 / 200 and p.max() <= 1.0


def test_manifest_record() -> None:
    record = calibrate(np.linspace(0, 1, 100), 0.05, confidence=0.8).to_manifest()
    assert record["method"] == "split_conformal_pac" and record["confidence"] == 0.8
    assert record["n_calibration"] == 100 and record["per_class"] is None
    assert set(record) >= {"value", "target_false_rejection", "method", "n_calibration", "confidence", "per_class"}
