"""Dependencies shared by route modules: the service state that serve/app.py keeps on ``app.state``.

Readiness is this one dependency: every route that needs the loaded model takes ``ReadyModel``
(predictor and batcher) or ``ReadyPredictor``; while the model is loading (or failed to load) it
answers 503 with Retry-After (ServiceState.require_ready) before the route runs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from osr.serve.batcher import DynamicBatcher
from osr.serve.predictor import Predictor


def ready_model(request: Request) -> tuple[Predictor, DynamicBatcher]:
    """The loaded model and its batcher; 503 with Retry-After while it is loading."""
    return request.app.state.service.require_ready()


ReadyModel = Annotated[tuple[Predictor, DynamicBatcher], Depends(ready_model)]


def ready_predictor(ready: ReadyModel) -> Predictor:
    """The loaded model; 503 with Retry-After while it is loading (ServiceState.require_ready)."""
    return ready[0]


ReadyPredictor = Annotated[Predictor, Depends(ready_predictor)]
