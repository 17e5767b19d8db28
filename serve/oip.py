"""Open Inference Protocol v2 (KServe / Triton HTTP): messages, tensor codec, binary tensor extension.

Binary tensor data extension (what ``tritonclient.http`` sends by default): the body is the JSON
header followed by raw little-endian tensor bytes; the header length is in the HTTP header
``Inference-Header-Content-Length`` and each binary input/output names its byte count in
``parameters.binary_data_size``. Responses use the same layout when any output is binary.
Request bodies compressed with ``Content-Encoding: gzip|deflate`` (tritonclient's
request_compression_algorithm) are accepted.

Hostile input is bounded before it costs memory: compressed bodies are inflated while they stream
in and refused (413) as soon as they pass the limit; the JSON part has its own size limit and a
nesting limit checked before ``json.loads``; shapes are checked with Python integers (rank,
each dimension, element count), so no product wraps around int64.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import AsyncIterable, Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_TENSOR_EXTENSION = "binary_tensor_data"

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
NUMPY_TO_DATATYPE = {dtype: name for name, dtype in DATATYPES.items()}
MANIFEST_DTYPES = {"uint8": "UINT8", "float32": "FP32", "int64": "INT64"}

MAX_JSON_DEPTH = 64  # a request is about 4 levels, plus one per dimension of nested 'data'
MAX_RANK = 16
MAX_DIMENSION = 2**31 - 1
_DEPTH_CHUNK = 1 << 20
# a JSON string, escapes included (unrolled, so matching is linear in the length)
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


class OipError(ValueError):
    """A request that breaks the protocol; answered ``status`` (400, or 413 for a limit) with {"error": message}."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# -- messages -------------------------------------------------------------------------------------

class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestInput(_Message):
    name: str = Field(min_length=1)  # no tensor is named "": the schema says so (a 400 otherwise)
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(_Message):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(_Message):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


# -- decoding requests ----------------------------------------------------------------------------

async def read_body(
    chunks: AsyncIterable[bytes], content_encoding: str | None, max_bytes: int, what: str = "the request body"
) -> bytes:
    """The body as it streams in, inflated on the fly for gzip/deflate; 413 as soon as it passes
    ``max_bytes`` (no more input is read, nothing beyond the limit is ever inflated)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise OipError(f"unsupported Content-Encoding {content_encoding!r}; use gzip, deflate or none")
    inflater = None if encoding == "identity" else zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        if inflater is not None:
            try:
                # at most one byte past the limit: enough to know it was passed
                chunk = inflater.decompress(chunk, max_bytes - size + 1)
            except zlib.error as exc:
                raise OipError(f"request body is not valid {encoding} data: {exc}") from None
        size += len(chunk)
        if size > max_bytes:
            raise OipError(f"{what} is larger than the limit of {max_bytes} bytes", status=413)
        parts.append(chunk)
    if inflater is not None:
        if not inflater.eof:
            raise OipError(f"request body is truncated {encoding} data")
        if inflater.unused_data:
            raise OipError(f"request body has {len(inflater.unused_data)} bytes after the end of its {encoding} data")
    return b"".join(parts)


async def read_infer_body(
    chunks: AsyncIterable[bytes], headers: Mapping[str, str], max_body_bytes: int, max_json_bytes: int
) -> bytes:
    """An inference request's body (read_body): without a binary section the whole body is JSON,
    so the JSON limit applies while it streams in; with one, the body limit does."""
    if HEADER_LENGTH.lower() in {name.lower() for name in headers}:
        limit, what = max_body_bytes, "the decompressed request body"
    else:
        limit, what = min(max_json_bytes, max_body_bytes), "the JSON part of the request"
    return await read_body(chunks, headers.get("content-encoding"), limit, what)


def check_json_depth(text: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse JSON nested deeper than ``limit`` before json.loads recurses into it.

    Linear and cheap: free when the text has at most ``limit`` brackets (any binary-data
    request); otherwise strings are blanked out (they may hold brackets) and the depth is a
    running sum over 1 MiB slices.
    """
    if text.count(b"[") + text.count(b"{") <= limit:
        return
    codes = np.frombuffer(_JSON_STRING.sub(b'""', text), dtype=np.uint8)
    depth = 0
    for start in range(0, codes.size, _DEPTH_CHUNK):
        part = codes[start:start + _DEPTH_CHUNK]
        steps = ((part == ord("[")) | (part == ord("{"))).astype(np.int32)
        steps -= (part == ord("]")) | (part == ord("}"))
        levels = np.cumsum(steps)
        if depth + int(levels.max()) > limit:
            raise OipError(f"request JSON nests deeper than {limit} levels")
        depth += int(levels[-1])


def element_count(name: str, shape: list[int], max_elements: int | None = None) -> int:
    """Elements of ``shape``, with Python integers (no int64 wrap-around); rank and dimensions capped."""
    if len(shape) > MAX_RANK:
        raise OipError(f"input {name!r}: shape has {len(shape)} dimensions, at most {MAX_RANK} are supported")
    for dimension in shape:
        if dimension < 0:
            raise OipError(f"input {name!r}: shape {shape} has a negative dimension")
        if dimension > MAX_DIMENSION:
            raise OipError(f"input {name!r}: dimension {dimension} of shape {shape} is larger than {MAX_DIMENSION}")
    count = math.prod(shape)
    if max_elements is not None and count > max_elements:
        raise OipError(f"input {name!r}: shape {shape} has {count} elements, the request holds at most "
                       f"{max_elements}")
    return count


def parse_infer_request(
    body: bytes, header_length: str | None, max_json_bytes: int | None = None
) -> tuple[InferRequest, bytes]:
    """Split the body into the JSON request and the binary section that follows it."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise OipError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 <= length <= len(body):
            raise OipError(f"{HEADER_LENGTH} is {length} but the body has {len(body)} bytes")
        json_part, binary = body[:length], body[length:]
    if max_json_bytes is not None and len(json_part) > max_json_bytes:
        raise OipError(f"the JSON part of the request is larger than the limit of {max_json_bytes} bytes", 413)
    if not json_part.strip():
        raise OipError("empty request: send a JSON inference request with an 'inputs' list")
    check_json_depth(json_part)
    try:
        payload = json.loads(json_part)
    except RecursionError:  # not reached after check_json_depth; kept so no parser limit becomes a 500
        raise OipError(f"request JSON nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers with too many digits
        raise OipError(f"request is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise OipError(f"request must be a JSON object, got {type(payload).__name__}")
    try:
        return InferRequest.model_validate(payload), binary
    except ValidationError as exc:
        raise OipError(f"invalid inference request: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "request"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def decode_input_tensors(request: InferRequest, binary: bytes) -> dict[str, np.ndarray]:
    """Every input as a numpy array of its declared datatype and shape (binary or JSON data)."""
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request.inputs:
        if tensor.name in tensors:
            raise OipError(f"input {tensor.name!r} is given twice")
        dtype = DATATYPES.get(tensor.datatype)
        if dtype is None:
            raise OipError(f"input {tensor.name!r}: datatype {tensor.datatype!r} is not supported "
                           f"(known: {', '.join(DATATYPES)})")
        size = (tensor.parameters or {}).get("binary_data_size")
        count = element_count(tensor.name, tensor.shape)  # then matched exactly against the data given
        if size is not None:
            if not isinstance(size, int) or size < 0:
                raise OipError(f"input {tensor.name!r}: binary_data_size must be a non-negative integer")
            if size != count * dtype.itemsize:
                raise OipError(f"input {tensor.name!r}: binary_data_size {size} does not match shape "
                               f"{tensor.shape} of {tensor.datatype} ({count * dtype.itemsize} bytes)")
            if offset + size > len(binary):
                raise OipError(f"input {tensor.name!r}: the body holds {len(binary) - offset} binary bytes "
                               f"for it, binary_data_size says {size}")
            array = np.frombuffer(binary, dtype=dtype.newbyteorder("<"), count=count, offset=offset)
            offset += size
        else:
            if tensor.data is None:
                raise OipError(f"input {tensor.name!r} has neither 'data' nor parameters.binary_data_size")
            array = _json_data_to_array(tensor.name, tensor.data, dtype, count)
        tensors[tensor.name] = array.reshape(tensor.shape)
    if offset != len(binary):
        raise OipError(f"the body has {len(binary) - offset} binary bytes that no input claims")
    return tensors


def _json_data_to_array(name: str, data: Any, dtype: np.dtype, count: int) -> np.ndarray:
    try:
        values = np.asarray(data)
    except (ValueError, OverflowError, TypeError, RecursionError):
        raise OipError(f"input {name!r}: 'data' must be a flat or regularly nested list of numbers") from None
    datatype = NUMPY_TO_DATATYPE[dtype]
    kind = values.dtype.kind
    if (dtype == np.bool_ and kind != "b") or (dtype != np.bool_ and kind not in "iuf"):
        raise OipError(f"input {name!r}: 'data' must be a flat or regularly nested list of {datatype} values")
    if values.size != count:
        raise OipError(f"input {name!r}: 'data' has {values.size} elements, the shape needs {count}")
    if np.issubdtype(dtype, np.integer) and values.size:
        if kind == "f" and not np.all(np.isfinite(values) & (values == np.round(values))):
            raise OipError(f"input {name!r}: {datatype} data must be integers")
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise OipError(f"input {name!r}: values outside the {datatype} range {info.min}..{info.max}")
    return values.reshape(-1).astype(dtype)


def requested_outputs(request: InferRequest, available: list[str]) -> list[tuple[str, bool]]:
    """(name, binary?) for each output to return; all outputs when the request names none."""
    default_binary = bool((request.parameters or {}).get("binary_data_output", False))
    if not request.outputs:
        return [(name, default_binary) for name in available]
    chosen = []
    for output in request.outputs:
        if output.name not in available:
            raise OipError(f"unknown output {output.name!r}; the model has {', '.join(available)}")
        parameters = output.parameters or {}
        if parameters.get("classification"):
            raise OipError("the classification extension is not supported; request the 'label' output instead")
        chosen.append((output.name, bool(parameters.get("binary_data", default_binary))))
    return chosen


# -- encoding responses ---------------------------------------------------------------------------

def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    chosen: list[tuple[str, bool]],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header length when binary data follows it (else None)."""
    response_outputs = []
    blobs = []
    for name, binary in chosen:
        array = np.ascontiguousarray(outputs[name])
        datatype = NUMPY_TO_DATATYPE[array.dtype]
        if binary:
            blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            blobs.append(blob)
            response_outputs.append(ResponseOutput(
                name=name, datatype=datatype, shape=list(array.shape), parameters={"binary_data_size": len(blob)},
            ))
        else:
            response_outputs.append(ResponseOutput(
                name=name, datatype=datatype, shape=list(array.shape), data=array.reshape(-1).tolist(),
            ))
    response = InferResponse(model_name=model_name, model_version=model_version, id=request_id,
                             outputs=response_outputs)
    header = response.model_dump_json(exclude_none=True).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def tensor_metadata_from_manifest(entries: list[dict]) -> list[TensorMetadata]:
    """Manifest tensor entries (numpy dtype names) as OIP tensor metadata."""
    return [
        TensorMetadata(name=e["name"], datatype=MANIFEST_DTYPES.get(e["dtype"], e["dtype"].upper()),
                       shape=[int(d) for d in e["shape"]])
        for e in entries
    ]
