"""The osr-serve FastAPI application: /v1/classify, Open Inference Protocol v2, health, metrics.

Status codes for bad input (never a 5xx):
- 401 missing or wrong API key (only when one is configured);
- 408 request headers not complete within ``header_timeout_s``, or body within ``body_timeout_s``;
- 413 body over ``max_body_bytes`` (Content-Length checked first, then counted while streaming),
  more than ``max_files`` files, more than ``max_infer_images`` images in one /v2 request, or an
  OIP JSON part / inflated body over its limit;
- 431 request line and headers over ``max_header_bytes``;
- 415 /v1/classify where NO file is a usable image (the message lists each file's reason); when
  at least one file decodes, the others are rows with status "error" and the answer is 200;
- 422 /v1/classify request that is not a multipart form with files in the field ``files``;
- 400 /v2 inference request with garbage JSON, a wrong shape or a wrong datatype;
- 404 unknown route, model or version;
- 503 with Retry-After while the model is loading; for a request still running when shutdown's
  grace period ends; when an upload found no room in the decode memory budget within
  ``decode_wait_s`` (serve/decode_gate.py); and when a request's decoding and inference did not
  finish within ``request_timeout_s`` of its body arriving (its remaining work is dropped).
/v1 (and every non-/v2 route) answers errors as {"detail": message}; /v2 as {"error": message},
the Open Inference Protocol's error body that tritonclient reads.
The API key guards /v1/* and /v2 metadata and inference; health, /metrics, the docs and the demo
page stay open for probes and scrapers, unless ``protect_all`` (then only the health probes are
open). docs/security.md lists every limit and what pins it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

import osr
from osr.export.manifest import INPUT_NAME, OUTPUT_NAMES, input_specs, output_specs
from osr.serve import oip
from osr.serve.batcher import DynamicBatcher
from osr.inputs import CheckedInput, InputLimits, check_input, error_message
from osr.serve import memory
from osr.serve.decode import DecodeError
from osr.serve.decode_gate import DecodeGate, Overloaded
from osr.serve.http_layer import (
    BodyReadError,
    api_key_guard,
    install_error_handlers,
    install_http_guards,
    overloaded,
)
from osr.serve.metrics import MetricsMiddleware, ServiceMetrics
from osr.serve.predictor import Predictor
from osr.serve.results import error_row, rows_from_outputs
from osr.serve.routes.demo import demo_router
from osr.serve.routes.docs import docs_router, install_openapi, mount_static
from osr.serve.routes.deps import ReadyModel, ReadyPredictor
from osr.serve.routes.model import model_router
from osr.serve.routes.schemas import ClassifyResponse, error_responses
from osr.serve.settings import Settings

log = logging.getLogger("osr.serve")

FILES_FIELD = "files"
SERVER_NAME = "osr-serve"
PredictorFactory = Callable[[], Predictor]


# -- state ----------------------------------------------------------------------------------------

@dataclass
class ServiceState:
    settings: Settings
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    predictor: Predictor | None = None
    batcher: DynamicBatcher | None = None
    gate: DecodeGate | None = None
    ready: bool = False
    load_error: str | None = None

    def require_ready(self) -> tuple[Predictor, DynamicBatcher]:
        if not self.ready or self.predictor is None or self.batcher is None:
            reason = f"model failed to load: {self.load_error}" if self.load_error else "model is still loading"
            raise HTTPException(503, f"not ready: {reason}", headers={"Retry-After": "1"})
        return self.predictor, self.batcher


def onnxruntime_threads(settings: Settings) -> int | None:
    """--threads if given; with several workers, the CPUs shared out between them (at least 1);
    else None (onnxruntime's default, one thread per core).

    Every worker's session defaulting to all cores oversubscribes the CPU: on 2 cores, 2 workers
    served 57-60 single-image req/s with onnxruntime's default and 88-99 with 1 thread each
    (bench/perf_service.py, docs/performance.md).
    """
    if settings.threads:
        return settings.threads
    if settings.workers > 1:
        return max(1, (os.cpu_count() or 1) // settings.workers)
    return None


def decode_threads(settings: Settings) -> int:
    """--decode-threads if given, else min(4, CPUs): Pillow decodes on one core, and more
    decodes at once than cores only share the CPU and add to the memory in flight."""
    return settings.decode_threads or min(4, os.cpu_count() or 1)


def default_predictor_factory(settings: Settings) -> PredictorFactory:
    def load() -> Predictor:
        return Predictor.from_repository(
            settings.model_repository, settings.model, settings.version,
            triton_url=settings.triton_url, triton_protocol=settings.triton_protocol,
            threads=onnxruntime_threads(settings), max_pixels=settings.max_pixels,
        )
    return load


async def _load_model(state: ServiceState, factory: PredictorFactory) -> None:
    """Load, warm up with one dummy batch, then start batching; /readyz turns 200 only after that."""
    try:
        predictor = await run_in_threadpool(factory)
        state.predictor = predictor
        state.metrics.watch(predictor.record.threshold,
                            images_per_request=state.settings.monitor_images_per_request)
        await run_in_threadpool(predictor.warmup)
        state.gate = DecodeGate(state.settings.decode_memory_bytes, decode_threads(state.settings),
                                state.settings.decode_wait_s, on_change=state.metrics.observe_decode_gate)
        memory.map_large_allocations()  # freed image memory goes back to the OS (serve/memory.py)
        state.batcher = DynamicBatcher(
            predictor.run, max_batch=state.settings.max_batch, max_wait_ms=state.settings.max_wait_ms,
            on_batch=state.metrics.observe_batch, track_arrivals=True,
        )
        state.ready = True
        log.info("model %s version %s ready", predictor.name, predictor.version)
    except Exception as exc:  # reported by /readyz; liveness stays up so the reason can be read
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("model failed to load")


# -- /v1 ------------------------------------------------------------------------------------------

_CLASSIFY_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": [FILES_FIELD],
            # an empty part is no image (415): the schema says a file has at least one byte
            "properties": {FILES_FIELD: {"type": "array", "minItems": 1,
                                         "items": {"type": "string", "format": "binary", "minLength": 1}}},
        }}},
    }
}


async def _read_files(request: Request, max_files: int) -> list[tuple[str, bytes]]:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPException(422, f"expected a multipart/form-data body with images in the field '{FILES_FIELD}', "
                                 f"got Content-Type {content_type or 'none'!r}")
    try:
        form = await request.form(max_files=max_files, max_fields=max_files)
    except BodyReadError:  # 413 or 408, not a malformed form
        raise
    except HTTPException as exc:  # Starlette reports every multipart problem as 400
        if str(exc.detail).startswith("Too many files"):
            raise HTTPException(413, f"too many files: at most {max_files} per request") from None
        raise HTTPException(422, f"malformed multipart body: {exc.detail}") from None
    try:
        values = form.getlist(FILES_FIELD)
        if not values:
            found = sorted(set(form.keys()))
            hint = f" (the form has {', '.join(repr(k) for k in found)})" if found else ""
            raise HTTPException(422, f"no files: send each image as a file in the multipart field "
                                     f"'{FILES_FIELD}'{hint}")
        items = []
        for index, value in enumerate(values):
            if not isinstance(value, UploadFile):
                raise HTTPException(422, f"the field '{FILES_FIELD}' must hold files, item {index} is a text value")
            items.append((value.filename or f"{FILES_FIELD}[{index}]", await value.read()))
        return items
    finally:
        await form.close()


@contextlib.asynccontextmanager
async def request_deadline(state: ServiceState) -> AsyncIterator[None]:
    """503 with Retry-After when the block (a request's decoding and inference) runs past
    ``request_timeout_s``; cancelling it drops the work not started (decodes still queued, batch
    chunks not run). A decode already running finishes on its thread, within the decode budget."""
    seconds = state.settings.request_timeout_s
    timeout = asyncio.timeout(seconds)
    try:
        async with timeout:
            yield
    except TimeoutError:
        if not timeout.expired():
            raise
        state.metrics.overloaded.labels("deadline").inc()
        raise overloaded(f"the request did not finish within its deadline of {seconds:g} s (decoding and "
                         "inference); its remaining work was dropped; retry later, or with fewer or smaller "
                         "images") from None


def _decode_and_resize(checked: CheckedInput, predictor: Predictor) -> np.ndarray:
    return predictor.preprocess(checked.decode())


async def _prepare(state: ServiceState, predictor: Predictor, items: list[tuple[str, bytes]]) -> list[np.ndarray | str]:
    """Each file through osr.inputs (the one input path) and the decode gate, one after the other
    (so requests take turns at the gate): the [S, S, 3] array, or the file's error message.
    The gate's Overloaded (no room within decode_wait_s) is the whole request's answer."""
    gate, limits = state.gate, InputLimits(state.settings.max_pixels)
    assert gate is not None
    prepared: list[np.ndarray | str] = []
    for name, data in items:
        try:
            checked = await gate.inspect(check_input, data, limits)
        except Exception as exc:  # DecodeError: the file's own fault
            prepared.append(error_message(exc))
            continue
        try:
            prepared.append(await gate.run(checked.memory_bytes, _decode_and_resize, checked, predictor))
        except Overloaded:
            raise
        except Exception as exc:  # the file's own fault, or a library failing on one odd image
            if not isinstance(exc, DecodeError):
                log.warning("cannot preprocess %s", name, exc_info=True)
            prepared.append(error_message(exc))
    return prepared


def _v1_router(state: ServiceState, guard: Callable[[Request], None]) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(guard)], tags=["classify"])
    settings = state.settings

    @router.post("/classify", response_model=ClassifyResponse, openapi_extra=_CLASSIFY_BODY_DOC,
                 responses=error_responses(401, 408, 413, 415, 422, 503),
                 summary="Classify images (known class or unknown)")
    async def classify(
        request: Request,
        ready: ReadyModel,
        top_k: int | None = Query(None, ge=0, le=1000, description="classes listed per image (default 5)"),
    ) -> dict:
        predictor, batcher = ready
        with batcher.arrival() as arrival:  # the batcher waits for this request while it is decoded
            items = await _read_files(request, settings.max_files)
            names = [name for name, _ in items]
            async with request_deadline(state):
                prepared = await _prepare(state, predictor, items)
                ok = [i for i, p in enumerate(prepared) if not isinstance(p, str)]
                state.metrics.files.labels("ok").inc(len(ok))
                state.metrics.files.labels("error").inc(len(prepared) - len(ok))
                if not ok:
                    reasons = "; ".join(f"{name}: {message}" for name, message in zip(names, prepared))
                    raise HTTPException(415, f"no file is a usable image: {reasons}")
                outputs = await batcher.infer(np.stack([prepared[i] for i in ok]), arrival)
        state.metrics.observe_request(outputs)
        k = settings.default_top_k if top_k is None else top_k
        rows: list[dict] = [
            error_row(name, p) if isinstance(p, str) else {} for name, p in zip(names, prepared)
        ]
        for i, row in zip(ok, rows_from_outputs(outputs, [names[i] for i in ok], predictor.classes, k)):
            rows[i] = row
        return {"model": predictor.name, "version": predictor.version, "results": rows}

    return router


# -- /v2 (Open Inference Protocol) ----------------------------------------------------------------

def _served_model(predictor: Predictor, model_name: str, model_version: str | None) -> Predictor:
    """The ready predictor if it is the model (and version) a /v2 path names; else 404."""
    if model_name != predictor.name:
        raise HTTPException(404, f"unknown model {model_name!r}; this server serves {predictor.name!r}")
    if model_version not in (None, "", str(predictor.version)):
        raise HTTPException(404, f"model {model_name!r} has no version {model_version!r} here "
                                 f"(served: {predictor.version})")
    return predictor


def _model_metadata(predictor: Predictor) -> oip.ModelMetadata:
    record = predictor.record
    inputs = list(record.inputs) or input_specs(predictor.image_size)
    outputs = list(record.outputs) or output_specs(len(predictor.classes))
    return oip.ModelMetadata(
        name=predictor.name, versions=[str(predictor.version)], platform="onnxruntime_onnx",
        inputs=oip.tensor_metadata_from_manifest(inputs), outputs=oip.tensor_metadata_from_manifest(outputs),
    )


def _model_config(predictor: Predictor, max_batch: int) -> dict:
    """The subset of Triton's model configuration clients read (max_batch_size, tensors)."""
    metadata = _model_metadata(predictor)

    def tensors(entries: list[oip.TensorMetadata]) -> list[dict]:
        return [{"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": t.shape[1:] or [1]} for t in entries]

    return {"name": predictor.name, "platform": "onnxruntime_onnx", "backend": "onnxruntime",
            "max_batch_size": max_batch, "input": tensors(metadata.inputs), "output": tensors(metadata.outputs)}


def _check_images_input(request: oip.InferRequest, image_size: int, max_images: int) -> None:
    names = [t.name for t in request.inputs]
    if names != [INPUT_NAME]:
        raise oip.OipError(f"the model takes exactly one input '{INPUT_NAME}', got {names}")
    tensor = request.inputs[0]
    if tensor.datatype != "UINT8":
        raise oip.OipError(f"input '{INPUT_NAME}' must have datatype UINT8, got {tensor.datatype}")
    expected = [image_size, image_size, 3]
    if len(tensor.shape) != 4 or list(tensor.shape[1:]) != expected or tensor.shape[0] < 1:
        raise oip.OipError(f"input '{INPUT_NAME}' must have shape [N, {image_size}, {image_size}, 3] with N >= 1 "
                           f"(RGB, already resized), got {tensor.shape}")
    oip.element_count(INPUT_NAME, list(tensor.shape))  # dimensions past int32 are a 400 first
    if tensor.shape[0] > max_images:  # before the tensor is decoded
        raise oip.OipError(f"input '{INPUT_NAME}' holds {tensor.shape[0]} images; at most {max_images} are "
                           "accepted in one request (send several requests)", status=413)


def _decode_infer_request(
    body: bytes, headers: Mapping[str, str], image_size: int, max_json_bytes: int, max_images: int
) -> tuple[oip.InferRequest, np.ndarray, list[tuple[str, bool]]]:
    infer_request, binary = oip.parse_infer_request(body, headers.get(oip.HEADER_LENGTH), max_json_bytes)
    _check_images_input(infer_request, image_size, max_images)
    chosen = oip.requested_outputs(infer_request, list(OUTPUT_NAMES))
    images = oip.decode_input_tensors(infer_request, binary)[INPUT_NAME]
    return infer_request, images, chosen


def _parse_memory_bytes(body: bytes, headers: Mapping[str, str]) -> int:
    """What parsing an inference request allocates: about 9 bytes for each byte of JSON (Python
    numbers, then the array; docs/security.md), while binary tensor data is used in place."""
    try:
        json_bytes = min(int(headers.get(oip.HEADER_LENGTH, len(body))), len(body))
    except ValueError:
        json_bytes = len(body)
    return 10 * max(json_bytes, 0) + (4 << 20)


_INFER_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "An Open Inference Protocol inference request: JSON, or (binary tensor extension) the JSON "
                       f"header followed by raw tensor bytes, its length in the {oip.HEADER_LENGTH} header.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    **error_responses(400, 401, 404, 408, 413, 503, oip=True),
    200: {"description": "The outputs: JSON, or with binary outputs the JSON header followed by raw bytes.",
          "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
}


def _v2_routers(state: ServiceState, guard: Callable[[Request], None]) -> list[APIRouter]:
    """Health routes stay open (probes); metadata and inference sit behind the API key."""
    settings = state.settings
    model_errors = error_responses(401, 404, 503, oip=True)
    open_router = APIRouter(prefix="/v2", tags=["open inference protocol"])
    router = APIRouter(prefix="/v2", dependencies=[Depends(guard)], tags=["open inference protocol"])

    @open_router.get("/health/live")
    async def server_live() -> dict:
        return {"live": True}

    @open_router.get("/health/ready", responses=error_responses(503, oip=True))
    async def server_ready(_: ReadyPredictor) -> dict:
        return {"ready": True}

    @router.get("", response_model=oip.ServerMetadata, responses=error_responses(401, oip=True))
    async def server_metadata() -> oip.ServerMetadata:
        return oip.ServerMetadata(name=SERVER_NAME, version=osr.__version__,
                                  extensions=[oip.BINARY_TENSOR_EXTENSION, "model_configuration"])

    @router.get("/models/{model_name}", response_model=oip.ModelMetadata, responses=model_errors)
    @router.get("/models/{model_name}/versions/{model_version}", response_model=oip.ModelMetadata,
                responses=model_errors)
    async def model_metadata(predictor: ReadyPredictor, model_name: str,
                             model_version: str | None = None) -> oip.ModelMetadata:
        return _model_metadata(_served_model(predictor, model_name, model_version))

    @router.get("/models/{model_name}/ready", responses=model_errors)
    @router.get("/models/{model_name}/versions/{model_version}/ready", responses=model_errors)
    async def model_ready(predictor: ReadyPredictor, model_name: str, model_version: str | None = None) -> dict:
        predictor = _served_model(predictor, model_name, model_version)
        return {"name": predictor.name, "ready": True}

    @router.get("/models/{model_name}/config", responses=model_errors)
    @router.get("/models/{model_name}/versions/{model_version}/config", responses=model_errors)
    async def model_config(predictor: ReadyPredictor, model_name: str, model_version: str | None = None) -> dict:
        return _model_config(_served_model(predictor, model_name, model_version), settings.max_batch)

    @router.post("/models/{model_name}/infer", response_model=oip.InferResponse, responses=_INFER_RESPONSES,
                 openapi_extra=_INFER_BODY_DOC)
    @router.post("/models/{model_name}/versions/{model_version}/infer", response_model=oip.InferResponse,
                 responses=_INFER_RESPONSES, openapi_extra=_INFER_BODY_DOC)
    async def infer(model_name: str, request: Request, ready: ReadyModel, model_version: str | None = None) -> Response:
        predictor, batcher = ready
        predictor = _served_model(predictor, model_name, model_version)
        with batcher.arrival() as arrival:
            body = await oip.read_infer_body(request.stream(), request.headers, settings.max_body_bytes,
                                             settings.max_json_bytes)  # inflated as it streams in, bounded
            async with request_deadline(state):
                # JSON parsing and tensor decoding: CPU work and memory, off the event loop and
                # through the decode gate like the uploads of /v1
                assert state.gate is not None
                infer_request, images, chosen = await state.gate.run(
                    _parse_memory_bytes(body, request.headers), _decode_infer_request, body, request.headers,
                    predictor.image_size, settings.max_json_bytes, settings.max_infer_images)
                outputs = await batcher.infer(images, arrival)
        state.metrics.observe_request(outputs)
        content, header_length = await run_in_threadpool(
            oip.encode_infer_response, predictor.name, str(predictor.version), infer_request.id, outputs, chosen)
        if header_length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream",
                        headers={oip.HEADER_LENGTH: str(header_length)})

    return [open_router, router]


# -- health and metrics ---------------------------------------------------------------------------

def _ops_router(state: ServiceState) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @router.get("/readyz", responses=error_responses(503))
    async def readyz(predictor: ReadyPredictor) -> dict:
        return {"status": "ready", "model": predictor.name, "version": predictor.version}

    @router.get("/metrics", response_class=PlainTextResponse,
                responses={200: {"description": "Prometheus text exposition format"}})
    async def metrics() -> Response:
        content, media_type = state.metrics.exposition()
        return Response(content, media_type=media_type)

    return router


# -- factory --------------------------------------------------------------------------------------

def create_app(settings: Settings | None = None, *, predictor_factory: PredictorFactory | None = None) -> FastAPI:
    """The service. The model loads in the background after startup; /readyz says when it is ready.

    ``predictor_factory`` (tests) replaces loading from ``settings.model_repository``.
    """
    settings = settings or Settings()
    state = ServiceState(settings)
    factory = predictor_factory or default_predictor_factory(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.create_task(_load_model(state, factory))
        try:
            yield
        finally:
            state.ready = False
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            if state.batcher is not None:
                await run_in_threadpool(state.batcher.close)  # finishes queued requests first
            if state.gate is not None:
                state.gate.close()
            if state.predictor is not None:
                state.predictor.close()

    app = FastAPI(title="osr-serve", version=osr.__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Open-set image recognition: a known class or 'unknown', with a conformal p-value.")
    app.state.service = state
    guard = api_key_guard(settings)
    routers = [_ops_router(state), _v1_router(state, guard), model_router(guard), *_v2_routers(state, guard),
               docs_router(app.title, app.openapi_url), demo_router()]
    for router in routers:
        app.include_router(router)
    mount_static(app)
    install_openapi(app, extra_models=[oip.InferRequest])
    # every route /metrics can name: the routers' and the app's own (/openapi.json, the /static mounts)
    routes = [route for router in routers for route in router.routes]
    routes += [route for route in app.routes if getattr(route, "path", None)]
    install_error_handlers(app)
    install_http_guards(app, settings)  # body limit and deadline, --protect-all, 503 on shutdown
    # outermost, so the body limit's 413s are counted too
    app.add_middleware(MetricsMiddleware, metrics=state.metrics, routes=lambda: routes)
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn factory (``osr.serve.app:create_app_from_env``): settings from the OSR_* environment."""
    return create_app(Settings())
