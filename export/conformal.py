"""Split-conformal unknown threshold with a false-rejection guarantee for known images.

Setting: calibration scores s_1..s_n of known-class images never trained on (higher = more
known); a new image is rejected as unknown when its score < threshold. With the threshold at the
k-th smallest calibration score s_(k):

* Split conformal (marginal), k = floor(alpha * (n + 1)). For a new known image exchangeable
  with the calibration images, P(score < s_(k)) <= k / (n + 1) <= alpha, with equality
  k / (n + 1) (so within 1 / (n + 1) of alpha) when scores have no ties. The probability is over
  both the calibration draw and the new image: an average over calibration sets.
  Needs floor(alpha * (n + 1)) >= 1, i.e. n >= ceil(1 / alpha) - 1.
* PAC / training-conditional (confidence 1 - delta; Vovk 2012, "Conditional validity of
  inductive conformal predictors"; Angelopoulos & Bates, "A gentle introduction to conformal
  prediction", sec. on training-conditional coverage). For one fixed calibration set the false
  rejection rate FRR = F(s_(k)) (F = CDF of known scores) is distributed like the k-th uniform
  order statistic, so P_cal(FRR > alpha) = P(Binomial(n, alpha) <= k - 1). Choosing the largest
  k with BinomCDF(k - 1; n, alpha) <= delta gives P_cal(FRR <= alpha) >= 1 - delta.
  Needs (1 - alpha)^n <= delta.
* Per class (Mondrian conformal): calibration images are grouped by their *predicted* (argmax)
  class and each group gets its own threshold, exactly how the exported graph applies them
  (threshold indexed by the argmax class). Grouping by a function of the image keeps the
  guarantee per group: P(reject | predicted class c) <= alpha, hence also overall.

The exported p-value p = (1 + #{s_i <= score}) / (n + 1) is consistent with the split-conformal
threshold: without ties, score < s_(k) exactly when p <= k / (n + 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

from osr.export.manifest import ThresholdRecord


@dataclass(frozen=True)
class ConformalThreshold:
    """A calibrated threshold; `to_manifest()` gives the manifest's "threshold" record.

    `value` is the threshold over all calibration scores; with `per_class` set, the graph uses
    per_class[argmax] instead and `value` is kept for reference.
    """

    value: float
    target_false_rejection: float
    method: str
    n_calibration: int
    rank: int
    confidence: float | None = None
    per_class: tuple[float, ...] | None = None
    per_class_n: tuple[int, ...] | None = None

    @property
    def class_thresholds(self) -> list[float] | float:
        """What OsrGraph takes: one value per class, or the single value."""
        return list(self.per_class) if self.per_class is not None else self.value

    @property
    def marginal_false_rejection_bound(self) -> float:
        """k / (n + 1): the marginal false-rejection rate (exact without ties)."""
        return self.rank / (self.n_calibration + 1)

    def to_record(self) -> ThresholdRecord:
        return ThresholdRecord(
            value=float(self.value), target_false_rejection=float(self.target_false_rejection),
            method=self.method, n_calibration=int(self.n_calibration), rank=int(self.rank),
            confidence=self.confidence, per_class=self.per_class, per_class_n_calibration=self.per_class_n,
        )

    def to_manifest(self) -> dict:
        """The manifest's "threshold" object (ThresholdRecord.to_manifest writes its fields)."""
        return self.to_record().to_manifest()


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"target false-rejection rate alpha must be in (0, 1), got {alpha}")


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def conformal_rank(n: int, alpha: float) -> int:
    """k = floor(alpha * (n + 1)); 0 when there are too few calibration scores."""
    _check_alpha(alpha)
    # The tiny slack keeps e.g. 0.05 * 20 = 1.0000000000000002 / 0.999... from flipping the floor.
    return int(math.floor(alpha * (n + 1) + 1e-9))


def pac_rank(n: int, alpha: float, confidence: float) -> int:
    """Largest k with BinomCDF(k - 1; n, alpha) <= 1 - confidence; 0 when none exists."""
    _check_alpha(alpha)
    _check_confidence(confidence)
    delta = 1.0 - confidence
    ks = np.arange(1, n + 1)
    ok = stats.binom.cdf(ks - 1, n, alpha) <= delta
    return int(ks[ok].max()) if ok.any() else 0


def min_calibration_size(alpha: float, confidence: float | None = None) -> int:
    """Smallest n for which a threshold exists."""
    _check_alpha(alpha)
    if confidence is None:
        n = max(math.ceil(1.0 / alpha) - 1, 1)
        while conformal_rank(n, alpha) < 1:
            n += 1
        return n
    _check_confidence(confidence)
    # (1 - alpha)^n <= delta is the k = 1 condition.
    n = max(math.ceil(math.log(1.0 - confidence) / math.log(1.0 - alpha)) - 1, 1)
    while pac_rank(n, alpha, confidence) < 1:
        n += 1
    return n


def _rank(n: int, alpha: float, confidence: float | None, what: str) -> int:
    k = conformal_rank(n, alpha) if confidence is None else pac_rank(n, alpha, confidence)
    if k < 1:
        needed = min_calibration_size(alpha, confidence)
        guarantee = f"alpha={alpha}" + ("" if confidence is None else f" at confidence {confidence}")
        raise ValueError(
            f"too few calibration images{what} for {guarantee}: have {n}, need at least {needed} "
            "(use more calibration images or a larger alpha)"
        )
    return k


def threshold_at_rank(scores: np.ndarray, k: int) -> float:
    """The k-th smallest score (1-based)."""
    return float(np.partition(np.asarray(scores, dtype=np.float64), k - 1)[k - 1])


def calibrate(
    scores: Sequence[float] | np.ndarray,
    alpha: float,
    confidence: float | None = None,
    predicted: Sequence[int] | np.ndarray | None = None,
    num_classes: int | None = None,
) -> ConformalThreshold:
    """Calibrate the reject-below threshold on known-image scores.

    confidence None: split conformal (marginal guarantee); otherwise the PAC rank.
    predicted (argmax class of each calibration image) with num_classes: per-class thresholds.
    Raises ValueError saying how many images are needed when there are too few (overall or in
    a class).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n = len(scores)
    k = _rank(n, alpha, confidence, "")
    method = "split_conformal" if confidence is None else "split_conformal_pac"
    per_class = per_class_n = None
    if predicted is not None:
        if num_classes is None:
            raise ValueError("per-class calibration needs num_classes")
        predicted = np.asarray(predicted).ravel()
        if len(predicted) != n:
            raise ValueError(f"{len(predicted)} predicted classes for {n} scores")
        thresholds, counts = [], []
        for c in range(num_classes):
            group = scores[predicted == c]
            k_c = _rank(len(group), alpha, confidence, f" predicted as class {c}")
            thresholds.append(threshold_at_rank(group, k_c))
            counts.append(int(len(group)))
        per_class, per_class_n = tuple(thresholds), tuple(counts)
    return ConformalThreshold(
        value=threshold_at_rank(scores, k),
        target_false_rejection=float(alpha),
        method=method,
        n_calibration=n,
        rank=k,
        confidence=confidence,
        per_class=per_class,
        per_class_n=per_class_n,
    )


def conformal_p_values(calibration_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(1 + #{calibration <= score}) / (n + 1), the numpy twin of the graph's p_value."""
    calibration = np.sort(np.asarray(calibration_scores, dtype=np.float64))
    counts = np.searchsorted(calibration, np.asarray(scores, dtype=np.float64), side="right")
    return (counts + 1.0) / (len(calibration) + 1.0)


def binomial_band(alpha: float, n_test: int, level: float = 0.99) -> tuple[float, float]:
    """Central `level` range of the observed rate of Binomial(n_test, alpha) / n_test.

    Where a realised false-rejection rate on n_test fresh known images should fall when the true
    rate is alpha (it ignores the calibration draw's own randomness; see `conformal_band`).
    """
    low, high = stats.binom.interval(level, n_test, alpha)
    return float(low) / n_test, float(high) / n_test


def conformal_band(n_calibration: int, rank: int, n_test: int, level: float = 0.99) -> tuple[float, float]:
    """Central `level` range of the realised false-rejection rate on n_test fresh images,
    including the calibration draw: the count is BetaBinomial(n_test, k, n - k + 1) (no ties)."""
    low, high = stats.betabinom.interval(level, n_test, rank, n_calibration - rank + 1)
    return float(low) / n_test, float(high) / n_test
