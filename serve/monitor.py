"""A drift monitor for the unknown flag: is the traffic still what the threshold was calibrated on?

For a new image of a known class, exchangeable with the calibration images, the conformal p-value
p = (1 + #{calibration scores <= score}) / (n + 1) is uniform on {1, ..., n + 1} / (n + 1), and
with a single threshold at rank k the image is flagged unknown exactly when p <= k / (n + 1)
(export/conformal.py). Two checks follow, and they look at disjoint parts of the p-values:

* The unknown rate. On known-class traffic the number flagged among N images is
  BetaBinomial(N, k, n - k + 1) (the calibration draw's randomness included, as in the export
  report's "conformal band"); its central 99 % range is the band. Above it: unknowns arrive, or
  the known classes look different from the calibration images.
* The uniformity of the ACCEPTED images' p-values. Given that an image of a known class is
  accepted, its p-value is uniform on {k + 1, ..., n + 1} / (n + 1), whatever the rate test says
  (the two are conditionally independent). Unknown images that slip past the threshold have
  p-values piled up just above it, so this test sees the errors the flag does not make visible,
  which the unknown rate cannot. Accepted p-values are mapped to u = (j - k - 1/2) / (n + 1 - k),
  j = p (n + 1) (the mid-point of each of the m = n + 1 - k steps) and compared with the uniform
  law by Kolmogorov-Smirnov. A p-value is the rank of the image's score among the calibration
  scores, so this is the two-sample KS test of served scores against the m calibration scores
  at or above the threshold: its p-value uses the effective size N m / (N + m). (Treating the
  uniform law as fixed ignores the calibration draw's own noise and alarmed in 22 % of simulated
  known-only runs at the 1 % level; tests/test_monitor.py.)

With one threshold per predicted class (``--per-class``) the acceptance cut in p differs between
classes, so accepted p-values are not uniform; there the test uses ALL images' p-values against
the uniform on {1, ..., n + 1} / (n + 1), and the rate's band is Binomial(N, alpha).

Pure numpy and the standard library (serving machines have no scipy); tests/test_monitor.py checks
every distribution function against scipy.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from osr.export.manifest import ThresholdRecord

DEFAULT_WINDOW = 1000
# at most this many images of one request enter the live window (a random sample of its images):
# one request then holds at most 1.6 % of the default window, however many images it sends
DEFAULT_IMAGES_PER_REQUEST = 16
BAND_LEVEL = 0.99
ALARM_P_VALUE = 0.01  # a batch summary's uniformity alarm; alert rules on the live gauge use lower
P_VALUE_BUCKETS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 21))


# -- distributions (numpy only) --------------------------------------------------------------------

def _central_interval(log_pmf: np.ndarray, level: float) -> tuple[int, int]:
    """scipy's ``interval``: (ppf((1 - level) / 2), ppf((1 + level) / 2)), ppf(q) = min{x: cdf(x) >= q}."""
    pmf = np.exp(log_pmf - log_pmf.max())
    cdf = np.cumsum(pmf) / pmf.sum()
    tail = (1.0 - level) / 2.0
    # a hair of slack against rounding in the cumulative sum, as scipy's discrete ppf has
    low = int(np.searchsorted(cdf, tail * (1 - 1e-10), side="left"))
    high = int(np.searchsorted(cdf, (1.0 - tail) * (1 - 1e-10), side="left"))
    return low, min(high, len(cdf) - 1)


def _log_choose(n: int) -> np.ndarray:
    """log C(n, x) for x = 0..n, as a running sum of log((n - i + 1) / i)."""
    i = np.arange(1, n + 1, dtype=np.float64)
    return np.concatenate([[0.0], np.cumsum(np.log(n - i + 1) - np.log(i))])


def _log_gamma_shifted(a: float, n: int) -> np.ndarray:
    """log Gamma(a + x) for x = 0..n (a > 0), by Gamma(a + x) = (a + x - 1) Gamma(a + x - 1)."""
    steps = np.log(a + np.arange(n, dtype=np.float64))
    return math.lgamma(a) + np.concatenate([[0.0], np.cumsum(steps)])


def binomial_interval(n: int, p: float, level: float = BAND_LEVEL) -> tuple[int, int]:
    """Central ``level`` range of Binomial(n, p) counts (= scipy.stats.binom.interval)."""
    if n <= 0:
        return 0, 0
    if p <= 0.0:
        return 0, 0
    if p >= 1.0:
        return n, n
    x = np.arange(n + 1)
    return _central_interval(_log_choose(n) + x * math.log(p) + (n - x) * math.log1p(-p), level)


def beta_binomial_interval(n: int, a: float, b: float, level: float = BAND_LEVEL) -> tuple[int, int]:
    """Central ``level`` range of BetaBinomial(n, a, b) counts (= scipy.stats.betabinom.interval)."""
    if n <= 0:
        return 0, 0
    # log B(x + a, n - x + b) up to a constant: Gamma(x + a) Gamma(n - x + b)
    log_beta = _log_gamma_shifted(a, n) + _log_gamma_shifted(b, n)[::-1]
    return _central_interval(_log_choose(n) + log_beta, level)


def kolmogorov_sf(statistic: float, n: float) -> float:
    """P(D_n >= statistic) for the one-sample two-sided KS statistic of n values (n may be the
    two-sample test's effective size n1 n2 / (n1 + n2)).

    The asymptotic Kolmogorov series with Stephens' small-sample correction
    lambda = (sqrt(n) + 0.12 + 0.11 / sqrt(n)) D (Stephens 1970; Numerical Recipes 14.3). Against
    scipy's exact p-value: within 0.025 for n >= 10 and 0.005 for n >= 1000, and within 12 %
    relative below p = 0.1 for n >= 20 (tests/test_monitor.py).
    """
    if n <= 0:
        return 1.0
    root = math.sqrt(n)
    lam = (root + 0.12 + 0.11 / root) * statistic
    if lam < 0.2:
        return 1.0
    total = 0.0
    for j in range(1, 101):
        term = 2.0 * (-1) ** (j - 1) * math.exp(-2.0 * j * j * lam * lam)
        total += term
        if abs(term) < 1e-12:
            break
    return float(min(1.0, max(0.0, total)))


def ks_uniform(values: np.ndarray, reference_size: int | None = None) -> tuple[float, float]:
    """(D, p-value) of the two-sided KS test of ``values`` against the uniform law on [0, 1].

    ``reference_size`` m: the uniform law is itself the empirical law of m random reference values
    (conformal p-values are ranks among the calibration scores), so the test is the two-sample
    one and its p-value uses the effective size n m / (n + m).
    """
    u = np.sort(np.clip(np.asarray(values, dtype=np.float64).reshape(-1), 0.0, 1.0))
    n = u.size
    if n == 0:
        return 0.0, 1.0
    i = np.arange(1, n + 1)
    statistic = float(max(np.max(i / n - u), np.max(u - (i - 1) / n)))
    size = n if reference_size is None else n * reference_size / (n + reference_size)
    return statistic, kolmogorov_sf(statistic, size)


# -- the null hypothesis of one model ------------------------------------------------------------

@dataclass(frozen=True)
class KnownTraffic:
    """What known-class traffic looks like through one model's threshold (the manifest's record).

    ``rank`` is k (None with per-class thresholds); ``expected_unknown_rate`` is k / (n + 1), the
    exact marginal rate without ties (alpha for per-class thresholds).
    """

    alpha: float
    n_calibration: int
    rank: int | None

    @classmethod
    def from_threshold(cls, record: ThresholdRecord | Mapping) -> KnownTraffic:
        """From the manifest's threshold record (a dict is parsed into a ThresholdRecord)."""
        threshold = ThresholdRecord.from_dict(record, "threshold")
        return cls(alpha=threshold.target_false_rejection, n_calibration=threshold.n_calibration,
                   rank=None if threshold.per_class_thresholds else threshold.rank)

    @property
    def accepted_only(self) -> bool:
        return self.rank is not None

    @property
    def expected_unknown_rate(self) -> float:
        return self.alpha if self.rank is None else self.rank / (self.n_calibration + 1)

    @functools.lru_cache(maxsize=64)  # a full window asks for the same n at every batch
    def unknown_band(self, n: int, level: float = BAND_LEVEL) -> tuple[float, float]:
        """Central ``level`` range of the unknown rate of n known-class images."""
        if n <= 0:
            return 0.0, 1.0
        if self.rank is None:
            low, high = binomial_interval(n, self.alpha, level)
        else:
            low, high = beta_binomial_interval(n, self.rank, self.n_calibration - self.rank + 1, level)
        return low / n, high / n

    @property
    def reference_size(self) -> int:
        """Calibration scores the tested p-values are ranked among: those at or above the threshold
        (n + 1 - k), or all n + 1 grid steps with per-class thresholds."""
        steps = self.n_calibration + 1
        return steps if self.rank is None else steps - self.rank

    def uniform_values(self, p_values: np.ndarray, unknown: np.ndarray) -> np.ndarray:
        """The values that are uniform on (0, 1) for known-class traffic (see the module docstring)."""
        p = np.asarray(p_values, dtype=np.float64).reshape(-1)
        steps = self.n_calibration + 1
        j = np.rint(p * steps)  # p is float32 (j / (n + 1)): back to the integer count
        if self.rank is None:
            return (j - 0.5) / steps
        accepted = ~np.asarray(unknown, dtype=bool).reshape(-1)
        return (j[accepted] - self.rank - 0.5) / (steps - self.rank)


# -- a summary of a set of decisions ---------------------------------------------------------------

@dataclass(frozen=True)
class Summary:
    images: int
    unknown: int
    unknown_rate: float
    alpha: float
    expected_unknown_rate: float
    band: tuple[float, float]
    band_level: float
    uniformity_set: str  # "accepted" or "all"
    uniformity_images: int
    ks_statistic: float
    ks_p_value: float

    @property
    def rate_alarm(self) -> bool:
        return self.images > 0 and not self.band[0] <= self.unknown_rate <= self.band[1]

    @property
    def uniformity_alarm(self) -> bool:
        return self.uniformity_images > 0 and self.ks_p_value < ALARM_P_VALUE

    def to_dict(self) -> dict:
        return {
            "images": self.images, "unknown": self.unknown, "unknown_rate": self.unknown_rate,
            "alpha": self.alpha, "expected_unknown_rate": self.expected_unknown_rate,
            "band": list(self.band), "band_level": self.band_level, "rate_alarm": self.rate_alarm,
            "uniformity_set": self.uniformity_set, "uniformity_images": self.uniformity_images,
            "ks_statistic": self.ks_statistic, "ks_p_value": self.ks_p_value,
            "uniformity_alarm": self.uniformity_alarm,
        }


def summarize(p_values: np.ndarray, unknown: np.ndarray, null: KnownTraffic,
              level: float = BAND_LEVEL) -> Summary:
    """The unknown rate against its band and the KS uniformity test, for one set of decisions."""
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    flags = np.asarray(unknown, dtype=bool).reshape(-1)
    if p.shape != flags.shape:
        raise ValueError(f"{p.size} p-values but {flags.size} unknown flags")
    n = int(p.size)
    n_unknown = int(flags.sum())
    u = null.uniform_values(p, flags)
    statistic, p_ks = ks_uniform(u, null.reference_size)
    return Summary(
        images=n, unknown=n_unknown, unknown_rate=n_unknown / n if n else 0.0,
        alpha=null.alpha, expected_unknown_rate=null.expected_unknown_rate,
        band=null.unknown_band(n, level), band_level=level,
        uniformity_set="accepted" if null.accepted_only else "all", uniformity_images=int(u.size),
        ks_statistic=statistic, ks_p_value=p_ks,
    )


def summarize_rows(rows: Iterable[Mapping], threshold: ThresholdRecord | Mapping, level: float = BAND_LEVEL) -> Summary:
    """``summarize`` over result rows (osr-score's JSONL or CSV, /v1/classify); error rows are skipped."""
    p_values, flags = [], []
    for row in rows:
        if row.get("status") != "ok":
            continue
        p_values.append(float(row["p_value"]))
        flags.append(row["unknown"] in (True, "True", "true"))
    return summarize(np.array(p_values), np.array(flags, dtype=bool), KnownTraffic.from_threshold(threshold), level)


def format_summary(summary: Summary) -> str:
    """The human-readable block osr-score --summary prints."""
    s = summary
    low, high = s.band
    pct = f"{int(round(s.band_level * 100))} %"
    rate_verdict = "ALARM: outside the band" if s.rate_alarm else "inside the band"
    if s.uniformity_set == "accepted":
        what = f"p-values of the {s.uniformity_images} accepted images, uniform above the threshold"
    else:
        what = f"p-values of all {s.uniformity_images} images (per-class thresholds)"
    ks_verdict = (f"ALARM: p < {ALARM_P_VALUE}" if s.uniformity_alarm else
                  f"no alarm (p >= {ALARM_P_VALUE})")
    return "\n".join([
        f"unknown rate   {s.unknown} of {s.images} = {s.unknown_rate:.4f}; expected for known classes "
        f"{s.expected_unknown_rate:.4f} (alpha {s.alpha:g}), {pct} band [{low:.4f}, {high:.4f}]: {rate_verdict}",
        f"uniformity     KS D = {s.ks_statistic:.4f}, p = {s.ks_p_value:.3g} over the {what}: {ks_verdict}",
    ])


# -- the live window -------------------------------------------------------------------------------

class WindowMonitor:
    """The last ``window`` decisions of a service; ``summary()`` tests them. Thread-safe.

    A service feeds it with ``observe_request``: at most ``images_per_request`` images of each
    request, drawn at random, so no single request can fill the window (one request of 1,000
    black images used to set it to 1,000 unknowns, hiding or faking drift). Many requests from one
    client still count as many requests: that needs client identity, which the monitor has not.
    """

    def __init__(self, null: KnownTraffic, window: int = DEFAULT_WINDOW,
                 images_per_request: int = DEFAULT_IMAGES_PER_REQUEST, seed: int | None = None) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        if images_per_request < 1:
            raise ValueError(f"images_per_request must be at least 1, got {images_per_request}")
        self.null = null
        self.window = int(window)
        self.images_per_request = int(images_per_request)
        self._p = np.zeros(self.window, dtype=np.float64)
        self._unknown = np.zeros(self.window, dtype=bool)
        self._count = 0  # images seen in total; the ring holds min(count, window) of them
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def observe(self, p_values: np.ndarray, unknown: np.ndarray) -> None:
        """Every one of these decisions enters the window (non-finite p-values are dropped)."""
        p = np.asarray(p_values, dtype=np.float64).reshape(-1)
        flags = np.asarray(unknown, dtype=bool).reshape(-1)
        finite = np.isfinite(p)
        p, flags = p[finite][-self.window:], flags[finite][-self.window:]
        with self._lock:
            slots = (self._count + np.arange(p.size)) % self.window
            self._p[slots] = p
            self._unknown[slots] = flags
            self._count += p.size

    def observe_request(self, p_values: np.ndarray, unknown: np.ndarray) -> None:
        """One request's decisions: at most ``images_per_request`` of them, drawn at random."""
        p = np.asarray(p_values, dtype=np.float64).reshape(-1)
        flags = np.asarray(unknown, dtype=bool).reshape(-1)
        if p.size > self.images_per_request:
            with self._lock:
                chosen = np.sort(self._rng.choice(p.size, self.images_per_request, replace=False))
            p, flags = p[chosen], flags[chosen]
        self.observe(p, flags)

    def summary(self) -> Summary:
        with self._lock:
            size = min(self._count, self.window)
            p, flags = self._p[:size].copy(), self._unknown[:size].copy()
        return summarize(p, flags, self.null)
