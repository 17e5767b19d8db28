"""Property-based fuzzing of osr-serve's inputs (issue 10): whatever a client sends to
/v1/classify or the Open Inference Protocol endpoints, the answer is never a 5xx, and the server
is ready and correct afterwards.

Hypothesis draws the inputs: random JSON, near-valid inference requests (shapes with huge,
negative or wrapping dimensions, every datatype, data of every type), the binary tensor extension
with lying sizes, compressed bodies (valid, truncated, with junk, unknown codings), multipart
uploads (random fields, file names, content types, real and broken images) and hand-built
multipart bodies with broken framing. Bounded: a fixed number of examples per property, no
deadline per example (a loaded CI machine), the whole file well under a minute.

Counts (examples run, statuses seen per property) are printed at the end and, with
OSR_FUZZ_REPORT=<path>, written as JSON (docs/security.md gives the command and a run's numbers).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import string
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from PIL import Image

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from osr.serve import oip  # noqa: E402
from osr.serve.app import create_app  # noqa: E402
from osr.serve.settings import Settings  # noqa: E402

INFER = "/v2/models/tiny/infer"
MAX_BODY = 512 * 1024
SEEN: dict[str, Counter] = defaultdict(Counter)
FUZZ = settings(max_examples=int(os.environ.get("OSR_FUZZ_EXAMPLES", "300")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def client(tiny_model_repository: Path) -> Iterator[TestClient]:
    app = create_app(Settings(model_repository=tiny_model_repository, threads=1, max_files=4,
                              max_body_bytes=MAX_BODY, max_json_bytes=MAX_BODY // 2))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        deadline = time.monotonic() + 60
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield test_client


def record(kind: str, response) -> None:
    SEEN[kind][response.status_code] += 1
    assert response.status_code < 500, f"{kind}: {response.status_code} {response.text[:500]}"


# -- strategies -----------------------------------------------------------------------------------

HEADER_TEXT = st.text(alphabet=string.ascii_letters + string.digits + " -_;=/.,\"'", max_size=12)
json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=25)
json_objects = st.dictionaries(st.sampled_from(["binary_data_output", "binary_data", "classification",
                                                "binary_data_size"]) | st.text(max_size=8), json_values, max_size=3)
dimensions = st.integers(-3, 40) | st.sampled_from([0, 1, 3, 32, 2**31 - 1, 2**31, 2**63, 18014398509481985, 2**70])
# the valid choice is drawn often enough that requests get past the first check and reach the model
valid_shapes = st.integers(1, 3).map(lambda n: [n, 32, 32, 3])
shapes = valid_shapes | valid_shapes | st.lists(dimensions, max_size=7) | dimensions.map(lambda n: [n, 32, 32, 3])
datatypes = st.just("UINT8") | st.just("UINT8") | st.sampled_from([*oip.DATATYPES, "uint8", "BYTES", ""]) | json_values
tensor_data = (json_values
               | st.lists(st.integers(-300, 300), max_size=64)
               | st.builds(lambda n, v: [v] * (3072 * n), st.integers(1, 2), st.integers(0, 255))
               | st.builds(lambda n, v: [v] * (3072 * n), st.integers(1, 2), st.integers(-1, 256) | st.just(255.5))
               | st.builds(lambda v: [[[[v] * 3] * 32] * 32], st.integers(0, 255) | st.booleans()))


@st.composite
def infer_requests(draw: st.DrawFn) -> object:
    """Near-valid inference requests: the right field names with wrong, odd or hostile values."""
    tensor: dict = {"name": draw(st.sampled_from(["images"] * 4 + ["x", ""]) | st.text(max_size=6)),
                    "shape": draw(shapes | shapes | json_values), "datatype": draw(datatypes)}
    if not draw(st.integers(0, 2)):  # a consistent tensor (that the other fields may still spoil)
        count = draw(st.integers(1, 3))
        value = draw(st.integers(0, 255))
        tensor.update(name="images", shape=[count, 32, 32, 3], datatype="UINT8",
                      data=draw(st.sampled_from([[value] * (3072 * count), [[[[value] * 3] * 32] * 32] * count])))
    elif draw(st.integers(0, 4)):
        tensor["data"] = draw(tensor_data)
    if not draw(st.integers(0, 3)):
        tensor["parameters"] = draw(st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-5, 10**6)
                                                                         | json_scalars}) | json_objects
                                    | json_values)
    request: dict = {"inputs": draw(st.just([tensor]) | st.just([tensor]) | st.lists(st.just(tensor), max_size=2)
                                    | json_values)}
    for field, values in (("id", st.text(max_size=8) | st.text(max_size=8) | json_scalars),
                          ("parameters", json_objects | json_objects | json_values),
                          ("outputs", st.lists(st.fixed_dictionaries(
                              {"name": st.sampled_from(["label", "score", "logits", "p_value", "x"])},
                              optional={"parameters": json_objects}), max_size=3) | json_values)):
        if not draw(st.integers(0, 2)):
            request[field] = draw(values)
    return request


def image_bytes(kind: str, width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (width, height), (width % 256, height % 256, 7))
    image.save(buffer, kind)
    return buffer.getvalue()


file_contents = (st.binary(max_size=600)
                 | st.builds(image_bytes, st.sampled_from(["PNG", "JPEG", "GIF", "BMP"]), st.integers(1, 48),
                             st.integers(1, 48))
                 | st.builds(lambda data, cut: data[:cut], st.builds(image_bytes, st.sampled_from(["PNG", "JPEG"]),
                                                                     st.integers(8, 48), st.integers(8, 48)),
                             st.integers(0, 200)))


def compress(body: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(body)
    if how == "deflate":
        return zlib.compress(body)
    return body


# -- Open Inference Protocol ----------------------------------------------------------------------

@FUZZ
@given(body=json_values)
def test_any_json_body(client: TestClient, body: object) -> None:
    record("oip infer: any JSON", client.post(INFER, content=json.dumps(body).encode()))


@FUZZ
@given(request=infer_requests())
def test_near_valid_inference_requests(client: TestClient, request: object) -> None:
    record("oip infer: near-valid request", client.post(INFER, content=json.dumps(request).encode()))


@FUZZ
@given(count=st.integers(1, 3) | st.just(0), shape=st.none() | st.none() | shapes,
       size=st.none() | st.none() | st.integers(-5, 12000) | json_scalars,
       payload=st.none() | st.none() | st.binary(max_size=700) | st.integers(0, 3).map(lambda n: bytes(3072 * n)),
       header_length=st.just("exact") | st.just("exact") | st.just("exact") | st.none()
       | st.integers(-10, 100_000).map(str) | HEADER_TEXT)
def test_binary_tensor_extension(client: TestClient, count: int, shape: list | None, size: object,
                                 payload: bytes | None, header_length: str | None) -> None:
    """None draws are the consistent choice (shape, size and payload of ``count`` images)."""
    tensor = {"name": "images", "shape": [count, 32, 32, 3] if shape is None else shape, "datatype": "UINT8",
              "parameters": {"binary_data_size": count * 3072 if size is None else size}}
    payload = bytes(range(256)) * 12 * count if payload is None else payload
    header = json.dumps({"inputs": [tensor]}).encode()
    headers = {}
    if header_length is not None:
        headers[oip.HEADER_LENGTH] = str(len(header)) if header_length == "exact" else header_length
    record("oip infer: binary extension", client.post(INFER, content=header + payload, headers=headers))


@FUZZ
@given(request=infer_requests() | json_values, how=st.sampled_from(["gzip", "deflate", "raw"]),
       encoding=st.just("matching") | st.just("matching") | st.sampled_from(
           ["gzip", "deflate", "identity", "GZIP", " gzip ", "br", "gzip, deflate", ""]) | HEADER_TEXT,
       damage=st.sampled_from(["none", "none", "truncate", "junk", "flip"]), where=st.integers(0, 10_000))
def test_compressed_bodies(client: TestClient, request: object, how: str, encoding: str, damage: str,
                           where: int) -> None:
    body = compress(json.dumps(request).encode(), how)
    if encoding == "matching":
        encoding = "identity" if how == "raw" else how
    if damage == "truncate":
        body = body[: where % (len(body) + 1)]
    elif damage == "junk":
        body += b"junk"
    elif damage == "flip" and body:
        i = where % len(body)
        body = body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1:]
    record("oip infer: compressed body", client.post(INFER, content=body, headers={"Content-Encoding": encoding}))


@FUZZ
@given(name=st.text(max_size=12), version=st.none() | st.text(max_size=6),
       tail=st.sampled_from(["", "/ready", "/config", "/infer"]))
def test_model_routes_with_any_name(client: TestClient, name: str, version: str | None, tail: str) -> None:
    path = f"/v2/models/{quote(name, safe='')}"
    if version is not None:
        path += f"/versions/{quote(version, safe='')}"
    if tail == "/infer":
        response = client.post(path + tail, content=b'{"inputs": []}')
    else:
        response = client.get(path + tail)
    record("oip model routes: any name", response)


# -- /v1/classify ---------------------------------------------------------------------------------

@FUZZ
@given(parts=st.lists(st.tuples(st.sampled_from(["files"] * 6 + ["file", ""]) | st.text(max_size=6),
                                st.text(min_size=1, max_size=30) | st.text(max_size=30) | st.none(), file_contents,
                                st.sampled_from(["image/png", "image/jpeg", "application/octet-stream", "text/plain",
                                                 ""])), max_size=5),
       texts=st.just({}) | st.just({}) | st.dictionaries(st.sampled_from(["files", "top_k", "x"]),
                                                          st.text(max_size=10), max_size=2),
       top_k=st.none() | st.none() | st.integers(0, 10).map(str) | st.integers(-5, 2000).map(str) | HEADER_TEXT)
def test_multipart_uploads(client: TestClient, parts: list, texts: dict, top_k: str | None) -> None:
    files = [(field, (filename, content, content_type)) for field, filename, content, content_type in parts]
    params = {} if top_k is None else {"top_k": top_k}
    response = client.post("/v1/classify", files=files or None, data=texts or None, params=params)
    record("v1 classify: multipart uploads", response)


@st.composite
def raw_multipart(draw: st.DrawFn) -> tuple[bytes, str]:
    """Hand-built multipart bodies: boundaries that do not match, broken framing, odd part headers."""
    boundary = draw(st.text(alphabet=string.ascii_letters + string.digits + "'()+_,-./:=?", min_size=1, max_size=70)
                    | st.text(alphabet=string.printable, max_size=72))
    declared = draw(st.just(f"multipart/form-data; boundary={boundary}") | st.sampled_from([
        f"multipart/form-data; boundary={boundary}", f'multipart/form-data; boundary="{boundary}"',
        "multipart/form-data", "multipart/form-data; boundary=", f"multipart/mixed; boundary={boundary}"])
        | HEADER_TEXT.map(lambda text: "multipart/form-data; " + text))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        disposition = draw(st.just('form-data; name="files"; filename="a.png"') | st.sampled_from([
            'form-data; name="files"; filename="a.png"', 'form-data; name="files"', "form-data",
            'form-data; name="files"; filename=""', 'form-data; name="files"; filename*=UTF-8\'\'%E2%82%AC.png',
            'attachment; filename="x"', ""]) | HEADER_TEXT)
        content = draw(file_contents)
        parts.append(b"--" + boundary.encode() + b"\r\nContent-Disposition: " + disposition.encode()
                     + b"\r\nContent-Type: image/png\r\n\r\n" + content + b"\r\n")
    body = b"".join(parts) + (b"--" + boundary.encode() + b"--\r\n" if draw(st.booleans()) else b"")
    if body and draw(st.booleans()):  # damage: cut, or insert bytes
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.binary(max_size=8)) + body[at + draw(st.integers(0, 16)):]
    return body, declared


@FUZZ
@given(case=raw_multipart())
def test_raw_multipart_bodies(client: TestClient, case: tuple[bytes, str]) -> None:
    body, content_type = case
    record("v1 classify: raw multipart", client.post("/v1/classify", content=body,
                                                     headers={"Content-Type": content_type}))


# -- afterwards -----------------------------------------------------------------------------------

def test_server_is_healthy_and_correct_after_fuzzing(client: TestClient) -> None:
    assert client.get("/readyz").json() == {"status": "ready", "model": "tiny", "version": 1}
    request = {"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072}]}
    assert client.post(INFER, json=request).status_code == 200
    png = image_bytes("PNG", 40, 30)
    response = client.post("/v1/classify", files=[("files", ("a.png", png, "image/png"))])
    assert response.status_code == 200 and response.json()["results"][0]["status"] == "ok"
    summary = {kind: {"examples": sum(statuses.values()),
                      "statuses": {str(code): n for code, n in sorted(statuses.items())}}
               for kind, statuses in SEEN.items()}
    total = sum(entry["examples"] for entry in summary.values())
    server_errors = sum(n for statuses in SEEN.values() for code, n in statuses.items() if code >= 500)
    report = {"examples": total, "server_errors": server_errors, "by_property": summary}
    print("\nfuzz summary:", json.dumps(report, indent=1))
    if os.environ.get("OSR_FUZZ_REPORT"):
        Path(os.environ["OSR_FUZZ_REPORT"]).write_text(json.dumps(report, indent=1) + "\n")
    assert server_errors == 0
