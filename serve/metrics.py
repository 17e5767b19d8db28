"""Prometheus metrics of osr-serve: one registry per app, so several apps (tests) never collide.

With several uvicorn workers, server.py sets PROMETHEUS_MULTIPROC_DIR and /metrics aggregates all
workers' files (prometheus-client multiprocess mode); otherwise it reports this process only. The
monitor's gauges (``osr_monitor_*``, serve/monitor.py) describe each worker's own window of recent
images; in multiprocess mode they carry a ``pid`` label, one series per live worker.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from osr.export.manifest import ThresholdRecord
from osr.serve.monitor import (
    DEFAULT_IMAGES_PER_REQUEST,
    DEFAULT_WINDOW,
    P_VALUE_BUCKETS,
    KnownTraffic,
    WindowMonitor,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Scores: max logit by default (unbounded: wide buckets around typical logit ranges) or the kNN
# cosine similarity (in [-1, 1]: tenths between 0 and 1), one bucket set for every model.
SCORE_BUCKETS = (-10, -5, -2, -1, 0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15,
                 20, 25, 30, 40, 50)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """The counters and histograms osr-serve exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "osr_requests", "HTTP requests by route template, method and status code",
            ["route", "method", "status"], registry=r,
        )
        self.latency = Histogram(
            "osr_request_duration_seconds", "HTTP request latency by route template",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.decisions = Counter("osr_decisions", "model decisions per image", ["decision"], registry=r)
        self.files = Counter("osr_classify_files", "files sent to /v1/classify by outcome", ["status"], registry=r)
        self.scores = Histogram("osr_score", "score per image (higher = more known)", buckets=SCORE_BUCKETS, registry=r)
        # equal 0.05-wide buckets: flat for known-class traffic (serve/monitor.py)
        self.p_values = Histogram("osr_p_value", "conformal p-value of 'known' per image", buckets=P_VALUE_BUCKETS,
                                  registry=r)
        self.batch_size = Histogram("osr_batch_size", "images per inference call (dynamic batching)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_latency = Histogram("osr_inference_duration_seconds", "duration of one inference call",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.monitor: WindowMonitor | None = None
        # load: the decode budget (serve/decode_gate.py) and the requests refused for load
        self.decode_reserved = Gauge("osr_decode_reserved_bytes", "estimated memory of the uploads being decoded "
                                     "now (at most decode_memory_bytes)", registry=r, multiprocess_mode="livesum")
        self.decode_waiting = Gauge("osr_decode_waiting", "uploads waiting for room to decode", registry=r,
                                    multiprocess_mode="livesum")
        self.overloaded = Counter("osr_overloaded", "requests answered 503 for load, by reason: decode_budget (no "
                                  "room to decode within decode_wait_s) or deadline (request_timeout_s passed)",
                                  ["reason"], registry=r)

        def gauge(name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
            return Gauge(f"osr_monitor_{name}", help_text, labels, registry=r, multiprocess_mode="liveall")

        self.window_images = gauge("window_images", "images in the monitor's window (the most recent ones)")
        self.unknown_rate = gauge("unknown_rate", "share of the window's images flagged unknown")
        self.alpha = gauge("alpha", "the model's target false-rejection rate alpha (manifest)")
        self.expected_unknown_rate = gauge(
            "expected_unknown_rate", "unknown rate expected on known-class traffic: rank / (n_calibration + 1)")
        self.unknown_rate_band = gauge(
            "unknown_rate_band", "99 % range of the window's unknown rate on known-class traffic", ["bound"])
        self.uniformity_images = gauge("uniformity_images", "p-values in the uniformity test of ks_statistic")
        self.ks_statistic = gauge(
            "ks_statistic", "Kolmogorov-Smirnov distance from uniform of the window's accepted images' p-values "
            "(all images' with per-class thresholds)")
        self.ks_p_value = gauge("ks_p_value", "p-value of that Kolmogorov-Smirnov test (small = drift)")

    def watch(self, threshold: ThresholdRecord | Mapping, window: int = DEFAULT_WINDOW,
              images_per_request: int = DEFAULT_IMAGES_PER_REQUEST) -> None:
        """Start the unknown-flag monitor for a model (its manifest's threshold record)."""
        self.monitor = WindowMonitor(KnownTraffic.from_threshold(threshold), window, images_per_request)
        self.alpha.set(self.monitor.null.alpha)
        self.expected_unknown_rate.set(self.monitor.null.expected_unknown_rate)
        self._update_monitor_gauges()

    def observe_decode_gate(self, reserved_bytes: int, waiting: int) -> None:
        self.decode_reserved.set(reserved_bytes)
        self.decode_waiting.set(waiting)

    def observe_batch(self, outputs: Mapping[str, np.ndarray], seconds: float) -> None:
        """Called by the batcher for each inference call: batch size, decisions, scores."""
        labels = np.asarray(outputs["label"]).reshape(-1)
        self.batch_size.observe(labels.shape[0])
        self.batch_latency.observe(seconds)
        unknown = int(np.count_nonzero(labels < 0))
        self.decisions.labels("unknown").inc(unknown)
        self.decisions.labels("known").inc(labels.shape[0] - unknown)
        for value in np.asarray(outputs["score"], dtype=np.float64).reshape(-1):
            self.scores.observe(value)
        for value in np.asarray(outputs["p_value"], dtype=np.float64).reshape(-1):
            self.p_values.observe(value)

    def observe_request(self, outputs: Mapping[str, np.ndarray]) -> None:
        """Called once per answered request with its outputs: a sample of at most
        ``images_per_request`` of its decisions enters the monitor's window."""
        if self.monitor is not None:
            labels = np.asarray(outputs["label"]).reshape(-1)
            self.monitor.observe_request(np.asarray(outputs["p_value"]), labels < 0)
            self._update_monitor_gauges()

    def _update_monitor_gauges(self) -> None:
        """The window's summary, never NaN: an empty window has rate 0 and band [0, 1]; a window
        without accepted images has KS D = 0 and p = 1 (no evidence either way), and
        ``uniformity_images`` 0 says so."""
        summary = self.monitor.summary()
        self.window_images.set(summary.images)
        self.unknown_rate.set(_finite(summary.unknown_rate, 0.0))
        self.unknown_rate_band.labels("low").set(_finite(summary.band[0], 0.0))
        self.unknown_rate_band.labels("high").set(_finite(summary.band[1], 1.0))
        self.uniformity_images.set(summary.uniformity_images)
        untested = summary.uniformity_images == 0
        self.ks_statistic.set(0.0 if untested else _finite(summary.ks_statistic, 0.0))
        self.ks_p_value.set(1.0 if untested else _finite(summary.ks_p_value, 1.0))

    def exposition(self) -> tuple[bytes, str]:
        """The text /metrics returns, and its content type."""
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _finite(value: float, default: float) -> float:
    return float(value) if math.isfinite(value) else default


class MetricsMiddleware:
    """Counts every HTTP request (the 413s of the body limit included) by route template and status."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics,
                 routes: Callable[[], Sequence[BaseRoute]] | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # to name the route of requests answered before routing (body limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()
        # routing rewrites the scope (a mount moves its prefix into root_path): match on the original
        initial_scope = dict(scope)

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            template = self._route_template(scope, initial_scope)
            method = scope.get("method", "")
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.latency.labels(template, method).observe(time.perf_counter() - start)

    def _route_template(self, scope: Scope, initial_scope: Scope) -> str:
        """The template ("/v2/models/{model_name}/infer", "/static" for a mount), never the raw path:
        bounded label values."""
        route = scope.get("route")
        if route is not None and getattr(route, "path", None):
            return route.path
        for candidate in self.routes() if self.routes else ():
            match, _ = candidate.matches(dict(initial_scope))
            if match is Match.FULL and getattr(candidate, "path", None):
                return candidate.path
        return "unmatched"
