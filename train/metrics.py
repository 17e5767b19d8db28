"""Open-set metrics on numpy arrays (no torch, so export and reports reuse them).

Convention: a higher score means "more known"; known images are the positive class and an
image is accepted as known when score >= threshold.
"""

from __future__ import annotations

import math

import numpy as np

SCORES: tuple[str, ...] = ("max_logit", "msp", "energy")


def _logsumexp(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]


def known_score(logits: np.ndarray, kind: str = "max_logit") -> np.ndarray:
    """Per-image "known" score from logits [N, K]: max logit, max softmax probability, or
    energy score logsumexp(logits) (the negative free energy)."""
    logits = np.asarray(logits, dtype=np.float64)
    if kind == "max_logit":
        return logits.max(axis=1)
    if kind == "msp":
        return np.exp(logits.max(axis=1) - _logsumexp(logits))
    if kind == "energy":
        return _logsumexp(logits)
    raise ValueError(f"unknown score kind {kind!r}; valid: {', '.join(SCORES)}")


def _labels_and_scores(known_scores: np.ndarray, unknown_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    known_scores, unknown_scores = np.asarray(known_scores), np.asarray(unknown_scores)
    labels = np.concatenate([np.ones(len(known_scores)), np.zeros(len(unknown_scores))])
    return labels, np.concatenate([known_scores, unknown_scores])


def auroc(known_scores: np.ndarray, unknown_scores: np.ndarray) -> float:
    """Area under the ROC curve, known = positive."""
    from sklearn.metrics import roc_auc_score  # imported here so score-only users need no sklearn

    return float(roc_auc_score(*_labels_and_scores(known_scores, unknown_scores)))


def aupr(known_scores: np.ndarray, unknown_scores: np.ndarray) -> float:
    """Average precision (area under precision-recall), known = positive."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(*_labels_and_scores(known_scores, unknown_scores)))


def fpr_at_tpr(known_scores: np.ndarray, unknown_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Share of unknown images accepted when at least `tpr` of known images are accepted.

    The threshold t is the largest value with mean(known >= t) >= tpr, i.e. the
    ceil(tpr * n)-th highest known score; FPR = mean(unknown >= t).
    """
    known = np.sort(np.asarray(known_scores, dtype=np.float64))[::-1]
    unknown = np.asarray(unknown_scores, dtype=np.float64)
    if len(known) == 0 or len(unknown) == 0:
        raise ValueError("fpr_at_tpr needs at least one known and one unknown score")
    # The small slack keeps e.g. 0.95 * 20 = 19.000000000000004 from rounding up to 20.
    needed = min(max(math.ceil(tpr * len(known) - 1e-9), 1), len(known))
    threshold = known[needed - 1]
    return float(np.mean(unknown >= threshold))


def oscr_curve(
    known_scores: np.ndarray, known_correct: np.ndarray, unknown_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, ccr) points of the OSCR curve from (0, 0) to (1, accuracy).

    As in docs/method.md, for each threshold d: CCR(d) = share of known images classified correctly
    with score > d, FPR(d) = share of unknown images with score >= d. Sweeping d down through
    each distinct score s gives two points: unknowns tied at s enter first (FPR rises), known
    images tied at s after (CCR rises), so ties between known and unknown count against OSCR.
    """
    known_scores = np.asarray(known_scores, dtype=np.float64)
    unknown = np.sort(np.asarray(unknown_scores, dtype=np.float64))
    correct = np.sort(known_scores[np.asarray(known_correct, dtype=bool)])
    if len(known_scores) == 0 or len(unknown) == 0:
        raise ValueError("oscr needs at least one known and one unknown score")

    thresholds = np.unique(np.concatenate([known_scores, unknown]))[::-1]
    fpr_at = (len(unknown) - np.searchsorted(unknown, thresholds, side="left")) / len(unknown)
    ccr_above = (len(correct) - np.searchsorted(correct, thresholds, side="right")) / len(known_scores)
    ccr_at = (len(correct) - np.searchsorted(correct, thresholds, side="left")) / len(known_scores)

    fpr = np.concatenate([[0.0], np.repeat(fpr_at, 2)])
    ccr = np.concatenate([[0.0], np.column_stack([ccr_above, ccr_at]).ravel()])
    return fpr, ccr


def oscr(known_scores: np.ndarray, known_correct: np.ndarray, unknown_scores: np.ndarray) -> float:
    """Open-set classification rate: area under CCR vs FPR (see `oscr_curve`)."""
    fpr, ccr = oscr_curve(known_scores, known_correct, unknown_scores)
    return float(np.sum(np.diff(fpr) * (ccr[1:] + ccr[:-1]) / 2.0))


def open_set_metrics(
    known_logits: np.ndarray,
    known_labels: np.ndarray,
    unknown_logits: np.ndarray,
    score: str = "max_logit",
) -> dict[str, float | int | str]:
    """Closed-set accuracy and open-set metrics (known = positive) as JSON-ready python values."""
    known_logits = np.asarray(known_logits, dtype=np.float64)
    unknown_logits = np.asarray(unknown_logits, dtype=np.float64)
    correct = known_logits.argmax(axis=1) == np.asarray(known_labels)
    s_known, s_unknown = known_score(known_logits, score), known_score(unknown_logits, score)
    return {
        "accuracy": float(correct.mean()),
        "auroc": auroc(s_known, s_unknown),
        "aupr": aupr(s_known, s_unknown),
        "oscr": oscr(s_known, correct, s_unknown),
        "fpr_at_95tpr": fpr_at_tpr(s_known, s_unknown, 0.95),
        "mean_max_logit_known": float(known_logits.max(axis=1).mean()),
        "mean_max_logit_unknown": float(unknown_logits.max(axis=1).mean()),
        "n_known": int(len(known_logits)),
        "n_unknown": int(len(unknown_logits)),
        "score": score,
    }


def near_chance_warning(metrics: dict, num_classes: int) -> str | None:
    """A warning when a finished run is close to guessing: accuracy within 10 points of 1/K, or an
    AUROC under 0.6 (0.5 is a coin flip). None when the run is clear of both."""
    problems = []
    chance = 1.0 / num_classes
    if "accuracy" in metrics and metrics["accuracy"] < chance + 0.1 * (1 - chance):
        problems.append(f"closed-set accuracy {metrics['accuracy']:.3f} is near chance ({chance:.3f})")
    if metrics.get("auroc") is not None and metrics["auroc"] < 0.6:
        problems.append(f"AUROC {metrics['auroc']:.3f} is near chance (0.5): the unknown flag would be a coin flip")
    if not problems:
        return None
    return ("; ".join(problems) + ". Train longer (--epochs), start from ImageNet weights (--arch efficientnet_lite0 "
            "--pretrained imagenet --input-size 64 or more), or add images per class.")
