"""Response bodies of osr-serve as pydantic models: what /openapi.json (and so /docs) documents.

Error bodies are osr-serve's own, one sentence each: {"detail": message} on /v1 and every non-/v2
route, {"error": message} on /v2 (the Open Inference Protocol's, what tritonclient reads).
FastAPI's default 422 body (a list of validation errors) is never sent, so it is not documented
(serve/routes/docs.py removes it).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

# -- errors ---------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    detail: str = Field(description="What was wrong, as one sentence for a person to read.")


class OipErrorBody(BaseModel):
    error: str = Field(description="What was wrong (the Open Inference Protocol's error body).")


ERROR_MEANINGS: dict[int, str] = {
    400: "Malformed inference request: not JSON, wrong tensor name, shape or datatype.",
    401: "Missing or wrong API key (only when the server has one: X-API-Key or Authorization: Bearer).",
    404: "No such model or version on this server.",
    408: "The request body did not arrive in time (the server's body deadline); the connection is closed.",
    413: "Request body over the server's limit, or more files (/v1) or images (/v2) than it takes in one request.",
    415: "No uploaded file is a usable image; the message gives each file's reason.",
    422: "Not a multipart/form-data body with files in the field 'files', or a bad query parameter.",
    503: "Not now; retry after the Retry-After header: the model is still loading (or failed to load), the "
         "server is decoding as many uploads as its memory budget allows, the request ran past its deadline "
         "(request_timeout_s, its remaining work dropped), or the server is shutting down.",
}


def error_responses(*codes: int, oip: bool = False) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entry of a route for the error codes it can answer."""
    model = OipErrorBody if oip else ErrorDetail
    responses: dict[int | str, dict[str, Any]] = {
        code: {"model": model, "description": ERROR_MEANINGS[code]} for code in codes}
    if 503 in responses:
        responses[503]["headers"] = {"Retry-After": {
            "description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 0}}}
    return responses


# -- /v1/classify ---------------------------------------------------------------------------------


class TopKEntry(BaseModel):
    class_index: int = Field(description="Index of the class in the model's class list.")
    class_name: str = Field(description="Name of the class.")
    logit: float = Field(description="The model's logit for this class (higher = more likely).")


class ResultRow(BaseModel):
    """One uploaded file's result; the same row osr-score writes and the Python API returns."""

    path: str = Field(description="The uploaded file's name (files[i] when it had none).")
    status: str = Field(description="'ok', or 'error' when this file could not be used (see error).",
                        examples=["ok"])
    error: str | None = Field(description="Why the file could not be used; null when status is 'ok'.")
    class_index: int | None = Field(
        description="Predicted class index, -1 when the image is flagged unknown; null on error rows.")
    class_name: str | None = Field(
        description="Predicted class name, 'unknown' when flagged unknown; null on error rows.")
    score: float | None = Field(
        description="How known the image looks (the manifest's score function, by default the maximum "
                    "logit; higher = more known). Flagged unknown when below the calibrated threshold.")
    p_value: float | None = Field(
        description="Conformal p-value of 'this image is of a known class': (1 + calibration scores <= "
                    "score) / (n + 1). Small = unlike the known classes; flagged unknown at <= alpha.")
    unknown: bool | None = Field(
        description="True when the image is flagged as none of the known classes; null on error rows.")
    top_k: list[TopKEntry] = Field(
        description="The top_k classes by logit, highest first (whatever the unknown flag); empty on error rows.")


class ClassifyResponse(BaseModel):
    model: str = Field(description="Name of the served model.")
    version: int = Field(description="Version of the served model.")
    results: list[ResultRow] = Field(description="One row per uploaded file, in upload order.")


# -- /v1/model ------------------------------------------------------------------------------------


class HeldOutMetrics(BaseModel):
    accuracy: float | None = Field(None, description="Closed-set accuracy on the known test images.")
    auroc: float | None = Field(None, description="AUROC of known vs unknown test images by score.")
    false_rejection_rate: float | None = Field(
        None, description="Share of known test images flagged unknown (FRR; compare with alpha).")
    unknown_rejected_rate: float | None = Field(None, description="Share of unknown test images flagged unknown.")
    oscr: float | None = Field(None, description="Open-set classification rate (area under the OSCR curve).")
    n_known_test: int | None = Field(None, description="Known test images behind these numbers.")
    n_unknown_test: int | None = Field(None, description="Unknown test images behind these numbers.")


class ModelCard(BaseModel):
    name: str = Field(description="Model name.")
    version: int = Field(description="Model version.")
    classes: list[str] = Field(description="The known classes, in class-index order.")
    image_size: int = Field(description="Side of the square the model sees (after resize and centre crop).")
    score_function: str = Field(description="How the score is computed from the logits.")
    alpha: float = Field(description="Target false-rejection rate: the share of known-class images the "
                                     "threshold may flag unknown.")
    expected_unknown_rate: float | None = Field(
        description="rank / (n_calibration + 1): the exact expected rate of known-class images flagged "
                    "unknown (null with per-class thresholds).")
    threshold_method: str = Field(description="How the threshold was calibrated (split_conformal, pac, ...).")
    per_class_thresholds: bool = Field(description="One threshold per predicted class.")
    n_calibration: int = Field(description="Calibration images behind the threshold.")
    test: HeldOutMetrics | None = Field(description="Held-out test metrics from the export report.")
    training: dict[str, Any] = Field(
        description="Where the model comes from: dataset, split, method, mix, architecture (as recorded).")
