"""GET /v1/model: the served model's card (classes, alpha, AUROC, FRR), for people and the demo page."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Depends, Request

from osr.serve.card import model_card
from osr.serve.routes.deps import ReadyPredictor
from osr.serve.routes.schemas import ModelCard, error_responses


def model_router(guard: Callable[[Request], None]) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(guard)], tags=["classify"])

    @router.get("/model", response_model=ModelCard, responses=error_responses(401, 503),
                summary="The served model's card: classes, alpha, test AUROC and false-rejection rate")
    async def model(predictor: ReadyPredictor) -> dict:
        return model_card(predictor.record)

    return router
