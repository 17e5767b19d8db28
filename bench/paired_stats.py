"""Paired statistics for the result tables (issue 24): the paired t test (two-sided, or one-sided against a
margin), two one-sided tests for equivalence (TOST), Holm's step-down correction over a family of p-values,
and the verdict rules registered in docs/results.md before the replication's runs.

Pure functions over lists of paired differences; scipy.stats.t for the t distribution.
"""

from __future__ import annotations

import math
import statistics

ALTERNATIVES = ("two-sided", "greater", "less")


def paired_t(deltas: list[float], margin: float = 0.0, alternative: str = "two-sided",
             confidence: float = 0.95) -> dict:
    """t test of the mean of ``deltas`` against ``margin``: H1 mean != margin (two-sided), mean > margin
    (greater) or mean < margin (less); with the two-sided ``confidence`` interval of the mean. Needs two
    or more differences; with zero spread the t statistic is infinite (p 0 or 1, the interval a point)."""
    from scipy import stats

    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    n = len(deltas)
    if n < 2:
        raise ValueError(f"a paired t test needs at least 2 differences, got {n}")
    mean, sd = statistics.mean(deltas), statistics.stdev(deltas)
    df, se = n - 1, sd / math.sqrt(n)
    if se == 0:
        t = math.inf if mean > margin else -math.inf if mean < margin else 0.0
    else:
        t = (mean - margin) / se
    if alternative == "greater":
        p = float(stats.t.sf(t, df))
    elif alternative == "less":
        p = float(stats.t.cdf(t, df))
    else:
        p = float(min(1.0, 2 * stats.t.sf(abs(t), df)))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return {"n": n, "df": df, "mean": mean, "sd": sd, "se": se, "t": t, "p": p, "margin": margin,
            "alternative": alternative, "ci": (mean - half, mean + half), "confidence": confidence}


def tost(deltas: list[float], low: float, high: float, confidence: float = 0.95) -> dict:
    """Two one-sided tests of equivalence: H1 low < mean < high. p is the larger of the p of "mean > low"
    and of "mean < high"; the interval is the two-sided ``confidence`` one (as in paired_t)."""
    above = paired_t(deltas, low, "greater", confidence)
    below = paired_t(deltas, high, "less", confidence)
    return {**above, "t": (above["t"], below["t"]), "p": max(above["p"], below["p"]), "margin": (low, high),
            "alternative": "equivalent"}


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the order given: the i-th smallest of m is multiplied by
    (m - i + 1), a running maximum keeps them ordered, and they are capped at 1. A None (a claim without
    data) counts as p = 1 in the family, so the family keeps its registered size, and stays None."""
    m = len(pvalues)
    filled = [1.0 if p is None else p for p in pvalues]
    order = sorted(range(m), key=lambda i: filled[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * filled[i]))
        adjusted[i] = running
    return [None if p is None else a for p, a in zip(pvalues, adjusted)]


def on_predicted_side(value: float, alternative: str, margin: float) -> bool:
    """Whether a mean difference lies where the prediction says (equivalent: inside ±margin)."""
    if alternative == "greater":
        return value > margin
    if alternative == "less":
        return value < margin
    if alternative == "equivalent":
        return -margin < value < margin
    raise ValueError(f"no predicted side for {alternative!r}")


def verdict(test: dict, adjusted_p: float | None, subset_means: list[float], alpha: float = 0.05) -> str:
    """The verdict rules registered with the predictions (docs/results.md, 2026-12-08): "held" when the
    Holm-adjusted p < alpha and every subset's mean difference lies on the predicted side of the margin;
    "falsified" when the two-sided interval lies entirely on the other side of the margin; else "not decided".
    ``test`` is paired_t's (one-sided) or tost's result; for tost the margin is the symmetric +m."""
    alternative = test["alternative"]
    margin = test["margin"][1] if alternative == "equivalent" else test["margin"]
    low, high = test["ci"]
    if adjusted_p is not None and adjusted_p < alpha and all(on_predicted_side(m, alternative, margin)
                                                             for m in subset_means):
        return "held"
    if alternative == "greater" and high < margin:
        return "falsified"
    if alternative == "less" and low > margin:
        return "falsified"
    if alternative == "equivalent" and (low > margin or high < -margin):
        return "falsified"
    return "not decided"
