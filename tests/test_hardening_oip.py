"""Hostile Open Inference Protocol requests (issue 10): shapes that overflow int64, JSON nesting
bombs, oversized JSON, gzip bombs. Each must be a 4xx with an {"error"} body, never a 500, and
must not make the server allocate much more than the limits allow."""

from __future__ import annotations

import asyncio
import gzip
import json
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from osr.serve import oip
from osr.serve.app import create_app
from osr.serve.settings import Settings

INFER = "/v2/models/tiny/infer"
MIB = 1024 * 1024
ZEROS_3072 = [0] * 3072


def wait_ready(client: TestClient) -> None:
    for _ in range(3000):
        if client.get("/readyz").status_code == 200:
            return
        asyncio.run(asyncio.sleep(0.01))
    raise AssertionError(client.get("/readyz").json())


@pytest.fixture(scope="module")
def client(tiny_model_repository: Path) -> Iterator[TestClient]:
    settings = Settings(model_repository=tiny_model_repository, threads=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        wait_ready(test_client)
        yield test_client


def images_request(shape: list, data: object = None, **tensor: object) -> dict:
    entry = {"name": "images", "shape": shape, "datatype": "UINT8", **tensor}
    if data is not None:
        entry["data"] = data
    return {"inputs": [entry]}


def assert_error(response, status: int, message: str | None = None) -> None:
    assert response.status_code == status, response.text
    if message is not None:
        assert response.json() == {"error": message}


# -- shapes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [18014398509481985, 2 ** 70], ids=["wraps_int64", "beyond_int64"])
def test_shape_that_overflows_int64_is_400(client: TestClient, batch: int) -> None:
    """[18014398509481985, 32, 32, 3] has 3072 elements modulo 2**64: int64 arithmetic thinks the
    3,072 values fit; [2**70, 32, 32, 3] does not fit an int64 at all."""
    response = client.post(INFER, json=images_request([batch, 32, 32, 3], ZEROS_3072))
    assert_error(response, 400, f"input 'images': dimension {batch} of shape [{batch}, 32, 32, 3] is larger "
                                f"than {oip.MAX_DIMENSION}")


def test_shape_overflow_with_binary_data_is_400(client: TestClient) -> None:
    header = json.dumps(images_request([18014398509481985, 32, 32, 3],
                                       parameters={"binary_data_size": 3072})).encode()
    response = client.post(INFER, content=header + bytes(3072),
                           headers={oip.HEADER_LENGTH: str(len(header))})
    assert_error(response, 400)
    assert "18014398509481985" in response.json()["error"]


def test_element_count_uses_python_integers() -> None:
    assert oip.element_count("x", [3, 4, 5], max_elements=60) == 60
    big = 2 ** 31 - 1
    with pytest.raises(oip.OipError, match="has 9903520300447984150353281023 elements"):
        oip.element_count("x", [big, big, big], max_elements=10)
    with pytest.raises(oip.OipError, match="dimensions"):
        oip.element_count("x", [1] * (oip.MAX_RANK + 1), max_elements=10)


# -- JSON -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"[" * 100_000,
    b'{"inputs": ' + b"[" * 100_000,
    b'{"inputs":[{"name":"images","shape":[1,32,32,3],"datatype":"UINT8","data":' + b"[" * 5000 + b"0"
    + b"]" * 5000 + b"}]}",
], ids=["bare", "inside_object", "inside_data"])
def test_json_nesting_bomb_is_400(client: TestClient, body: bytes) -> None:
    response = client.post(INFER, content=body)
    assert_error(response, 400, f"request JSON nests deeper than {oip.MAX_JSON_DEPTH} levels")


def test_brackets_inside_strings_do_not_count_as_nesting(client: TestClient) -> None:
    request = images_request([1, 32, 32, 3], ZEROS_3072)
    request["id"] = "[" * 10_000 + '\\"' + "{" * 10_000
    response = client.post(INFER, json=request)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == request["id"]


def test_number_with_too_many_digits_is_400(client: TestClient) -> None:
    response = client.post(INFER, content=b'{"inputs":[{"name":"images","shape":[' + b"9" * 5000 + b',32,32,3],'
                                          b'"datatype":"UINT8","data":[0]}]}')
    assert_error(response, 400)
    assert response.json()["error"].startswith("request is not valid JSON")


def test_json_part_over_its_limit_is_413(client: TestClient) -> None:
    limit = Settings.model_fields["max_json_bytes"].default
    response = client.post(INFER, content=b'{"inputs": [' + b" " * limit + b"]}")
    assert_error(response, 413, f"the JSON part of the request is larger than the limit of {limit} bytes")


# -- compression ----------------------------------------------------------------------------------

def gzip_bomb(decompressed_mib: int) -> bytes:
    """A gzip body that inflates to a JSON request of ``decompressed_mib`` MiB of zeros.

    After a full flush deflate forgets its history, so the compressed form of each further MiB is
    the same bytes: built once and repeated, the bomb costs nothing to make."""
    head = b'{"inputs":[{"name":"images","shape":[1,32,32,3],"datatype":"UINT8","data":['
    block, tail = b"0," * (MIB // 2), b"0]}]}"
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = compressor.compress(head + block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    last = compressor.compress(tail) + compressor.flush()
    crc = zlib.crc32(head + block)
    for _ in range(decompressed_mib - 1):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(tail, crc)
    size = len(head) + decompressed_mib * len(block) + len(tail)
    trailer = crc.to_bytes(4, "little") + (size % 2**32).to_bytes(4, "little")
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + first + repeated * (decompressed_mib - 1) + last + trailer


def test_gzip_bomb_is_valid_gzip() -> None:
    assert gzip.decompress(gzip_bomb(3)) == (b'{"inputs":[{"name":"images","shape":[1,32,32,3],"datatype":"UINT8",'
                                             b'"data":[' + b"0," * (3 * MIB // 2) + b"0]}]}")


@pytest.mark.parametrize("decompressed_mib", [19, 500])
def test_gzip_bomb_is_413_with_bounded_memory(client: TestClient, decompressed_mib: int) -> None:
    """The issue's bomb: ~20 KiB of gzip that inflates to ~20 MB of JSON drove the server to ~310 MB.
    Python allocations while the request is handled (tracemalloc's peak) stay far below that."""
    body = gzip_bomb(decompressed_mib)
    assert len(body) < 600 * 1024
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        response = client.post(INFER, content=body, headers={"Content-Encoding": "gzip"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    limit = Settings.model_fields["max_json_bytes"].default
    assert_error(response, 413, f"the JSON part of the request is larger than the limit of {limit} bytes")
    assert peak < 3 * limit + 8 * MIB, f"peak {peak / MIB:.0f} MiB"
    assert client.get("/readyz").status_code == 200


def test_truncated_and_trailing_gzip_are_400(client: TestClient) -> None:
    body = gzip.compress(json.dumps(images_request([1, 32, 32, 3], ZEROS_3072)).encode())
    truncated = client.post(INFER, content=body[:-20], headers={"Content-Encoding": "gzip"})
    assert_error(truncated, 400, "request body is truncated gzip data")
    trailing = client.post(INFER, content=body + b"junk", headers={"Content-Encoding": "gzip"})
    assert_error(trailing, 400, "request body has 4 bytes after the end of its gzip data")
    assert client.post(INFER, content=body, headers={"Content-Encoding": "gzip"}).status_code == 200


def test_decompression_stops_reading_at_the_limit() -> None:
    """Inflating while the body streams in: once the output passes the limit, no more input is read."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    consumed = []

    async def chunks() -> AsyncIterator[bytes]:
        for index in range(1000):  # 1000 MiB once inflated
            consumed.append(index)
            yield compressor.compress(b"\0" * MIB) + compressor.flush(zlib.Z_SYNC_FLUSH)

    with pytest.raises(oip.OipError) as info:
        asyncio.run(oip.read_body(chunks(), "gzip", max_bytes=3 * MIB, what="the body"))
    assert info.value.status == 413 and str(info.value) == f"the body is larger than the limit of {3 * MIB} bytes"
    assert len(consumed) == 4


def test_read_body_passes_plain_bodies_through() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b"cd"

    assert asyncio.run(oip.read_body(chunks(), None, max_bytes=4)) == b"abcd"
    with pytest.raises(oip.OipError, match="^the request body is larger than the limit of 3 bytes$"):
        asyncio.run(oip.read_body(chunks(), "identity", max_bytes=3))


def test_server_is_healthy_after_every_attack(client: TestClient) -> None:
    assert client.get("/readyz").json() == {"status": "ready", "model": "tiny", "version": 1}
    assert client.post(INFER, json=images_request([1, 32, 32, 3], ZEROS_3072)).status_code == 200
