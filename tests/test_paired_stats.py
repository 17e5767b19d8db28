"""bench/paired_stats.py (issue 24): known answers of the paired t test, TOST and Holm's correction, computed
by hand (the t distribution with 2 degrees of freedom has a closed form), the registered verdict rules, and
the review of issue 24 reproduced from the committed metrics of the grid."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"
SPEC = importlib.util.spec_from_file_location("paired_stats", BENCH / "paired_stats.py")
paired_stats = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(paired_stats)


def t2_cdf(t: float) -> float:
    """The CDF of Student's t with 2 degrees of freedom: 1/2 + t / (2 sqrt(2 + t^2))."""
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert paired_stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert paired_stats.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # 0.5 x 2 = 1.0 caps the next one too
    assert paired_stats.holm([0.04]) == pytest.approx([0.04])
    # issue 24's review: the smallest raw p of an 8-claim family, 0.007, is 0.056 after Holm
    assert paired_stats.holm([0.007] + [0.5] * 7)[0] == pytest.approx(0.056)
    # a claim without data counts as p = 1 in the family (its size stays) and stays None
    assert paired_stats.holm([0.01, None, 0.02]) == [pytest.approx(0.03), None, pytest.approx(0.04)]


def test_paired_t_by_hand():
    # deltas 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t = 2 sqrt(3), df 2
    r = paired_stats.paired_t([1.0, 2.0, 3.0])
    assert (r["n"], r["df"], r["mean"], r["sd"]) == (3, 2, 2.0, 1.0)
    assert r["t"] == pytest.approx(2 * math.sqrt(3))
    assert r["p"] == pytest.approx(2 * (1 - t2_cdf(2 * math.sqrt(3))))  # 0.07418
    assert r["p"] == pytest.approx(0.074180, abs=1e-6)
    # 95 % interval: t(0.975, 2) = 0.95 / sqrt(2 x 0.975 x 0.025) = 4.302653
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) / math.sqrt(3)
    assert r["ci"] == pytest.approx((2 - half, 2 + half)) and r["ci"][0] == pytest.approx(-0.484138, abs=1e-5)
    # one-sided against a margin of 1: t = 1 / (1/sqrt(3)) = sqrt(3)
    g = paired_stats.paired_t([1.0, 2.0, 3.0], margin=1.0, alternative="greater")
    assert g["t"] == pytest.approx(math.sqrt(3)) and g["p"] == pytest.approx(1 - t2_cdf(math.sqrt(3)))  # 0.1127
    less = paired_stats.paired_t([1.0, 2.0, 3.0], margin=1.0, alternative="less")
    assert less["p"] == pytest.approx(t2_cdf(math.sqrt(3)))
    with pytest.raises(ValueError, match="at least 2"):
        paired_stats.paired_t([1.0])
    with pytest.raises(ValueError, match="alternative"):
        paired_stats.paired_t([1.0, 2.0], alternative="bigger")


def test_paired_t_without_spread():
    r = paired_stats.paired_t([2.0, 2.0, 2.0], margin=1.0, alternative="greater")
    assert r["t"] == math.inf and r["p"] == 0.0 and r["ci"] == (2.0, 2.0)


def test_tost_by_hand():
    deltas = [0.1, -0.2, 0.3]
    mean, sd = sum(deltas) / 3, math.sqrt(sum((d - sum(deltas) / 3) ** 2 for d in deltas) / 2)
    se = sd / math.sqrt(3)
    p_above = 1 - t2_cdf((mean + 1) / se)  # H0 mean <= -1
    p_below = t2_cdf((mean - 1) / se)      # H0 mean >= +1
    r = paired_stats.tost(deltas, -1.0, 1.0)
    assert r["p"] == pytest.approx(max(p_above, p_below)) and r["alternative"] == "equivalent"
    assert r["p"] < 0.05
    assert paired_stats.tost([0.5, 1.5, 2.5], -1.0, 1.0)["p"] > 0.5  # centred on 1.5: not equivalent within ±1


def test_verdicts_follow_the_registered_rules():
    v = paired_stats.verdict
    up = paired_stats.paired_t([2.0, 3.0, 2.5, 2.2], margin=1.0, alternative="greater")
    assert v(up, 0.01, [2.5, 2.3]) == "held"
    assert v(up, 0.01, [2.5, 0.9]) == "not decided"  # one subset's mean on the wrong side of the margin
    assert v(up, 0.2, [2.5, 2.3]) == "not decided"   # Holm p too large
    low = paired_stats.paired_t([0.1, 0.3, 0.2, 0.25], margin=1.0, alternative="greater")
    assert low["ci"][1] < 1 and v(low, 1.0, [0.2]) == "falsified"
    down = paired_stats.paired_t([-2.0, -3.0, -2.5], alternative="less")
    assert v(down, 0.01, [-2.5]) == "held"
    assert v(paired_stats.paired_t([1.0, 1.2, 1.1], alternative="less"), 1.0, [1.1]) == "falsified"
    eq = paired_stats.tost([0.1, -0.2, 0.3, 0.0], -1.0, 1.0)
    assert v(eq, 0.01, [0.1, -0.1]) == "held" and v(eq, 0.01, [0.1, 1.2]) == "not decided"
    far = paired_stats.tost([2.0, 2.2, 2.1], -1.0, 1.0)
    assert v(far, 1.0, [2.1]) == "falsified"


def test_the_review_of_issue_24_from_the_committed_grid():
    """Mixed-target AD minus CE+CutMix AUROC: +2.65 points, two-sided p 0.007 over seeds 0-2 (the review's
    numbers, recomputed from the committed metrics.json files)."""
    grid = BENCH / "results" / "regime" / "resnet18-w0.25-n150-e200-randaugment-false-batch-size-32"

    def auroc(run):
        return json.loads((grid / run / "metrics.json").read_text())["metrics"]["auroc"]

    deltas = [100 * (auroc(f"ad-cutmix-target-mixed-seed{s}") - auroc(f"ce-cutmix-seed{s}")) for s in range(3)]
    r = paired_stats.paired_t(deltas)
    assert round(r["mean"], 2) == 2.65 and round(r["p"], 3) == 0.007
