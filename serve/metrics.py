"""Prometheus metrics of osr-serve: one registry per app, so several apps (tests) never collide.

With several uvicorn workers, server.py sets PROMETHEUS_MULTIPROC_DIR and /metrics aggregates all
workers' files (prometheus-client multiprocess mode); otherwise it reports this process only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import multiprocess
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# score = max logit by default: unbounded, so wide buckets around typical logit ranges
SCORE_BUCKETS = (-10, -5, -2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30, 40, 50)
P_VALUE_BUCKETS = (0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
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
        self.p_values = Histogram("osr_p_value", "conformal p-value of 'known' per image", buckets=P_VALUE_BUCKETS,
                                  registry=r)
        self.batch_size = Histogram("osr_batch_size", "images per inference call (dynamic batching)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_latency = Histogram("osr_inference_duration_seconds", "duration of one inference call",
                                       buckets=LATENCY_BUCKETS, registry=r)

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

    def exposition(self) -> tuple[bytes, str]:
        """The text /metrics returns, and its content type."""
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


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

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            template = self._route_template(scope)
            method = scope.get("method", "")
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.latency.labels(template, method).observe(time.perf_counter() - start)

    def _route_template(self, scope: Scope) -> str:
        """The template ("/v2/models/{model_name}/infer"), never the raw path: bounded label values."""
        route = scope.get("route")
        if route is not None and getattr(route, "path", None):
            return route.path
        for candidate in self.routes() if self.routes else ():
            match, _ = candidate.matches(dict(scope))
            if match is Match.FULL and getattr(candidate, "path", None):
                return candidate.path
        return "unmatched"
