"""Dependencies shared by route modules: the service state that serve/app.py keeps on ``app.state``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from osr.serve.predictor import Predictor


def ready_predictor(request: Request) -> Predictor:
    """The loaded model; 503 with Retry-After while it is loading (ServiceState.require_ready)."""
    predictor, _ = request.app.state.service.require_ready()
    return predictor


ReadyPredictor = Annotated[Predictor, Depends(ready_predictor)]
