"""serve/monitor.py: its distribution functions against scipy, known answers, and the monitor's two
tests on simulated split-conformal traffic (false-alarm rate on known classes, power on a mix)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from osr.serve.monitor import (
    KnownTraffic,
    WindowMonitor,
    beta_binomial_interval,
    binomial_interval,
    format_summary,
    ks_uniform,
    summarize,
    summarize_rows,
)

SINGLE = {"value": 1.0, "target_false_rejection": 0.05, "n_calibration": 300, "rank": 15, "per_class": None, "method": "split_conformal"}


# -- distributions against scipy ------------------------------------------------------------------

@pytest.mark.parametrize(("n", "p"), [(1, 0.3), (10, 0.05), (37, 0.5), (1000, 0.05), (6000, 0.05), (20000, 0.01),
                                      (50, 0.999)])
def test_binomial_interval_is_scipys(n: int, p: float) -> None:
    assert binomial_interval(n, p, 0.99) == tuple(int(v) for v in stats.binom.interval(0.99, n, p))
    assert binomial_interval(n, p, 0.9) == tuple(int(v) for v in stats.binom.interval(0.9, n, p))


@pytest.mark.parametrize(("n", "a", "b"), [(10, 3, 58), (50, 1, 1), (1000, 150, 2851), (6000, 150, 2851),
                                           (500, 15, 286), (20000, 150, 2851)])
def test_beta_binomial_interval_is_scipys(n: int, a: int, b: int) -> None:
    assert beta_binomial_interval(n, a, b, 0.99) == tuple(int(v) for v in stats.betabinom.interval(0.99, n, a, b))


def test_band_of_the_bundled_models_threshold_is_its_reports_conformal_band() -> None:
    """model_repository/cifar10-ad/1/report: 6000 known test images, n = 3000, k = 150."""
    null = KnownTraffic.from_threshold({"value": 1.0, "target_false_rejection": 0.05, "n_calibration": 3000,
                                        "rank": 150, "per_class": None})
    low, high = null.unknown_band(6000)
    assert (round(low, 6), round(high, 6)) == (0.038167, 0.063167)
    assert null.expected_unknown_rate == 150 / 3001


def test_ks_known_answers() -> None:
    assert ks_uniform(np.array([0.5]))[0] == 0.5
    n = 200
    statistic, p = ks_uniform((np.arange(1, n + 1) - 0.5) / n)  # the most uniform sample there is
    assert statistic == pytest.approx(1 / (2 * n))
    assert p == 1.0
    statistic, p = ks_uniform(np.full(100, 0.01))
    assert statistic == pytest.approx(0.99)
    assert p < 1e-12
    assert ks_uniform(np.array([])) == (0.0, 1.0)


def test_ks_against_scipys_exact_test() -> None:
    rng = np.random.default_rng(1)
    for n, absolute in ((10, 0.025), (20, 0.025), (100, 0.015), (1000, 0.005)):
        for _ in range(60):
            values = rng.beta(1.0, 1.0 + rng.random() * 3 / math.sqrt(n), n)
            statistic, p = ks_uniform(values)
            exact = stats.kstest(values, "uniform", method="exact")
            assert statistic == pytest.approx(exact.statistic, abs=1e-12)
            assert abs(p - exact.pvalue) <= absolute, (n, p, exact.pvalue)
            if n >= 20 and exact.pvalue < 0.1:
                assert p == pytest.approx(exact.pvalue, rel=0.12), (n, p, exact.pvalue)


# -- which p-values are uniform -------------------------------------------------------------------

def test_accepted_p_values_on_their_grid_are_the_uniform_mid_points() -> None:
    null = KnownTraffic.from_threshold(SINGLE)
    n, k = 300, 15
    p = (np.arange(1, n + 2) / (n + 1)).astype(np.float32)  # every p-value, as the graph's float32
    unknown = p <= k / (n + 1)
    assert int(unknown.sum()) == k
    u = null.uniform_values(p, unknown)
    m = n + 1 - k
    np.testing.assert_allclose(u, (np.arange(1, m + 1) - 0.5) / m)
    assert ks_uniform(u)[0] == pytest.approx(1 / (2 * m))


def test_per_class_thresholds_test_all_p_values() -> None:
    null = KnownTraffic.from_threshold({**SINGLE, "per_class": [1.0, 2.0], "rank": 15})
    assert not null.accepted_only and null.rank is None and null.expected_unknown_rate == 0.05
    p = np.arange(1, 302) / 301
    u = null.uniform_values(p, p < 0.5)  # the flags do not matter here
    np.testing.assert_allclose(u, (np.arange(1, 302) - 0.5) / 301)
    assert null.unknown_band(1000) == (33 / 1000, 69 / 1000)  # Binomial(1000, 0.05)


# -- the two tests on simulated split-conformal traffic -----------------------------------------

def conformal_traffic(rng: np.random.Generator, n_images: int, unknown_share: float, n_cal: int = 300,
                      alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray, dict]:
    """A fresh calibration draw, then images whose score is N(0, 1) (known) or N(-1.5, 1) (unknown)."""
    calibration = np.sort(rng.normal(size=n_cal))
    k = math.floor(alpha * (n_cal + 1))
    unknowns = rng.random(n_images) < unknown_share
    scores = np.where(unknowns, rng.normal(-1.5, 1.0, n_images), rng.normal(size=n_images))
    p = (np.searchsorted(calibration, scores, side="right") + 1.0) / (n_cal + 1)
    flagged = scores < calibration[k - 1]
    threshold = {"value": 1.0, "target_false_rejection": alpha, "n_calibration": n_cal, "rank": k, "per_class": None}
    return p.astype(np.float32), flagged, threshold


def test_known_class_traffic_rarely_alarms() -> None:
    """Each run draws its own calibration set, so this is the marginal false-alarm rate. The
    uniformity test must treat the calibration scores as a sample (two-sample KS): against a fixed
    uniform law it alarmed in 89 of these 400 runs."""
    rng = np.random.default_rng(7)
    runs = 400
    rate_alarms = uniformity_alarms = 0
    for _ in range(runs):
        p, flagged, threshold = conformal_traffic(rng, 500, unknown_share=0.0)
        summary = summarize(p, flagged, KnownTraffic.from_threshold(threshold))
        assert summary.uniformity_set == "accepted" and summary.uniformity_images == 500 - summary.unknown
        rate_alarms += summary.rate_alarm
        uniformity_alarms += summary.uniformity_alarm
    # both tests are at the 1 % level; 400 runs: Binomial(400, 0.01) stays under 11 with p > 0.999
    assert rate_alarms <= 10 and uniformity_alarms <= 10, (rate_alarms, uniformity_alarms)


def test_a_mix_with_unknowns_alarms_on_both_tests() -> None:
    rng = np.random.default_rng(8)
    p, flagged, threshold = conformal_traffic(rng, 2000, unknown_share=0.3, n_cal=3000)
    summary = summarize(p, flagged, KnownTraffic.from_threshold(threshold))
    assert summary.rate_alarm and summary.unknown_rate > summary.band[1]
    assert summary.uniformity_alarm and summary.ks_p_value < 1e-6


# -- the live window and the rows API -------------------------------------------------------------

def test_window_keeps_the_most_recent_images() -> None:
    rng = np.random.default_rng(3)
    null = KnownTraffic.from_threshold(SINGLE)
    monitor = WindowMonitor(null, window=100)
    assert monitor.summary().images == 0
    p = rng.random(250)
    flags = p < 0.05
    for start in range(0, 250, 30):  # batches of 30 wrap around the ring
        monitor.observe(p[start:start + 30], flags[start:start + 30])
    assert monitor.summary() == summarize(p[-100:], flags[-100:], null)
    monitor.observe(p[:150], flags[:150])  # a batch larger than the window
    assert monitor.summary() == summarize(p[50:150], flags[50:150], null)


def test_summarize_rows_reads_jsonl_and_csv_rows_and_skips_errors() -> None:
    rows = [
        {"status": "ok", "p_value": 0.5, "unknown": False},
        {"status": "ok", "p_value": "0.01", "unknown": "True"},  # a CSV row
        {"status": "error", "p_value": None, "unknown": None},
        {"status": "ok", "p_value": "0.9", "unknown": "False"},
    ]
    summary = summarize_rows(rows, SINGLE)
    assert (summary.images, summary.unknown, summary.uniformity_images) == (3, 1, 2)


def test_format_summary_text() -> None:
    p = np.array([0.01, 0.2, 0.5, 0.9], dtype=np.float32)
    summary = summarize(p, p <= 15 / 301, KnownTraffic.from_threshold(SINGLE))
    low, high = summary.band
    assert format_summary(summary).splitlines() == [
        f"unknown rate   1 of 4 = 0.2500; expected for known classes 0.0498 (alpha 0.05), 99 % band "
        f"[{low:.4f}, {high:.4f}]: inside the band",
        f"uniformity     KS D = {summary.ks_statistic:.4f}, p = {summary.ks_p_value:.3g} over the p-values of the 3 "
        "accepted images, uniform above the threshold: no alarm (p >= 0.01)",
    ]


def test_osr_score_summary_prints_the_batch_test(tmp_path, capsys) -> None:
    """osr-score --summary on the bundled model: the same block as summarize_rows over --out."""
    import json
    from pathlib import Path

    from osr.export.manifest import resolve_version_dir
    from osr.serve.score_cli import main as score_main

    root = Path(__file__).resolve().parents[1]
    repository = root / "model_repository"
    samples = sorted(str(p) for p in (root / "samples").glob("*.jpg"))
    for out in (tmp_path / "rows.jsonl", tmp_path / "rows.csv"):
        assert score_main([*samples, "--model-repository", str(repository), "--out", str(out), "--summary"]) == 0
        printed = capsys.readouterr().out.strip()
        manifest = json.loads((resolve_version_dir(repository, None, None) / "manifest.json").read_text())
        rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
        assert printed == format_summary(summarize_rows(rows, manifest["threshold"]))
        unknown = sum(row["unknown"] for row in rows)
        assert printed.startswith(f"unknown rate   {unknown} of {len(samples)} = {unknown / len(samples):.4f}; "
                                  "expected for known classes 0.0500")
