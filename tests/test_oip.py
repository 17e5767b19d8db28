"""Open Inference Protocol v2 on osr-serve, through the real ``tritonclient.http`` against a real uvicorn
server on 127.0.0.1 (the same client code that talks to Triton), plus protocol errors over raw HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from osr.serve.app import create_app
from osr.serve.in_thread import free_port
from osr.serve.predictor import OUTPUT_NAMES, Predictor
from osr.serve.settings import Settings

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def server_url(tiny_model_repository: Path) -> Iterator[str]:
    port = free_port()
    app = create_app(Settings(model_repository=tiny_model_repository, port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://{url}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and thread.is_alive(), "osr-serve did not become ready"
        time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(15)


@pytest.fixture(scope="module")
def client(server_url: str) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(server_url)
    yield triton
    triton.close()


@pytest.fixture(scope="module")
def predictor(tiny_model_repository: Path) -> Predictor:
    return Predictor.from_repository(tiny_model_repository)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)


def images_input(batch: np.ndarray, binary: bool = True, datatype: str = "UINT8") -> httpclient.InferInput:
    tensor = httpclient.InferInput("images", list(batch.shape), datatype)
    tensor.set_data_from_numpy(batch, binary_data=binary)
    return tensor


def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("tiny")
    assert client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("tiny", "2")
    assert not client.is_model_ready("other")
    server = client.get_server_metadata()
    assert server["name"] == "osr-serve" and "binary_tensor_data" in server["extensions"]
    metadata = client.get_model_metadata("tiny")
    assert metadata["name"] == "tiny" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}]
    assert metadata["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "score", "datatype": "FP32", "shape": [-1]},
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "p_value", "datatype": "FP32", "shape": [-1]},
    ]
    assert client.get_model_metadata("tiny", "1") == metadata
    assert client.get_model_config("tiny")["max_batch_size"] == 32


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_the_predictor(client, predictor, images, binary: bool) -> None:
    expected = predictor.run(images)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in OUTPUT_NAMES]
    result = client.infer("tiny", [images_input(images, binary)], outputs=outputs)
    for name in OUTPUT_NAMES:
        got = result.as_numpy(name)
        assert got.dtype == expected[name].dtype, name
        np.testing.assert_array_equal(got, expected[name], err_msg=name)
    assert result.get_response()["model_version"] == "1"


def test_default_request_returns_every_output_in_binary(client, predictor, images) -> None:
    result = client.infer("tiny", [images_input(images)], model_version="1", request_id="abc")
    response = result.get_response()
    assert response["id"] == "abc"
    assert [o["name"] for o in response["outputs"]] == list(OUTPUT_NAMES)
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    np.testing.assert_array_equal(result.as_numpy("label"), predictor.run(images)["label"])


def test_requested_subset_of_outputs(client, predictor, images) -> None:
    result = client.infer("tiny", [images_input(images[:2])],
                          outputs=[httpclient.InferRequestedOutput("p_value")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["p_value"]
    assert result.as_numpy("label") is None
    np.testing.assert_array_equal(result.as_numpy("p_value"), predictor.run(images[:2])["p_value"])


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(client, predictor, images, algorithm: str) -> None:
    result = client.infer("tiny", [images_input(images)], request_compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("score"), predictor.run(images)["score"])


def test_triton_backend_of_the_predictor_works_against_osr_serve(server_url, tiny_model_repository, predictor):
    """osr-score's Triton backend, pointed at osr-serve, gives the in-process answers."""
    remote = Predictor.from_repository(tiny_model_repository, triton_url=server_url)
    try:
        rng = np.random.default_rng(5)
        batch = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        assert remote.predict_batch(batch, ["a", "b", "c"]) == predictor.predict_batch(batch, ["a", "b", "c"])
    finally:
        remote.close()


def expect_error(call, status: str | None, message: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        call()
    assert info.value.message() == message
    if status is not None:
        assert info.value.status() == status


def test_wrong_datatype_is_400(client, images) -> None:
    floats = images.astype(np.float32)
    expect_error(lambda: client.infer("tiny", [images_input(floats, datatype="FP32")]), "400",
                 "input 'images' must have datatype UINT8, got FP32")


def test_wrong_shape_is_400(client, images) -> None:
    expect_error(lambda: client.infer("tiny", [images_input(images[:, :16])]), "400",
                 "input 'images' must have shape [N, 32, 32, 3] with N >= 1 (RGB, already resized), "
                 "got [5, 16, 32, 3]")


def test_unknown_output_is_400(client, images) -> None:
    expect_error(lambda: client.infer("tiny", [images_input(images)],
                                      outputs=[httpclient.InferRequestedOutput("probabilities")]),
                 "400", "unknown output 'probabilities'; the model has logits, score, label, p_value")


def test_unknown_model_and_version_are_404(client, images) -> None:
    expect_error(lambda: client.infer("other", [images_input(images)]), "404",
                 "unknown model 'other'; this server serves 'tiny'")
    expect_error(lambda: client.infer("tiny", [images_input(images)], model_version="7"), "404",
                 "model 'tiny' has no version '7' here (served: 1)")
    expect_error(lambda: client.get_model_metadata("other"), "404", "unknown model 'other'; this server serves 'tiny'")


# -- protocol errors over raw HTTP ----------------------------------------------------------------

INFER = "/v2/models/tiny/infer"
GOOD_JSON = b'{"inputs":[{"name":"images","shape":[1,32,32,3],"datatype":"UINT8","parameters":{"binary_data_size":3072}}]}'


@pytest.mark.parametrize(("body", "headers", "message"), [
    (b"{garbage", {}, "request is not valid JSON: Expecting property name enclosed in double quotes: "
                      "line 1 column 2 (char 1)"),
    (b"", {}, "empty request: send a JSON inference request with an 'inputs' list"),
    (b"[1, 2]", {}, "request must be a JSON object, got list"),
    (b'{"inputs": []}', {}, "invalid inference request: inputs: List should have at least 1 item after "
                            "validation, not 0"),
    (b'{"inputs": [{"name": "images"}]}', {}, "invalid inference request: inputs.0.shape: Field required; "
                                              "inputs.0.datatype: Field required"),
    (b'{"inputs":[{"name":"pixels","shape":[1,32,32,3],"datatype":"UINT8","data":[]}]}', {},
     "the model takes exactly one input 'images', got ['pixels']"),
    (b'{"inputs":[{"name":"images","shape":[1,32,32,3],"datatype":"UINT8","data":[1,2,3]}]}', {},
     "input 'images': 'data' has 3 elements, the shape needs 3072"),
    (b'{"inputs":[{"name":"images","shape":[1,32,32,3],"datatype":"UINT8","data":[[1,2],[3]]}]}', {},
     "input 'images': 'data' must be a flat or regularly nested list of numbers"),
    (b'{"inputs":[{"name":"images","shape":[1,32,32,3],"datatype":"UINT8","data":["a"]}]}', {},
     "input 'images': 'data' must be a flat or regularly nested list of UINT8 values"),
    (b'{"inputs":[{"name":"images","shape":[1,1,1,1],"datatype":"UINT8","data":[1]}]}', {},
     "input 'images' must have shape [N, 32, 32, 3] with N >= 1 (RGB, already resized), got [1, 1, 1, 1]"),
    (b'{"inputs":[{"name":"images","shape":[1,32,32,3],"datatype":"UINT8"}]}', {},
     "input 'images' has neither 'data' nor parameters.binary_data_size"),
    (GOOD_JSON + b"\0" * 100, {"Inference-Header-Content-Length": str(len(GOOD_JSON))},
     "input 'images': the body holds 100 binary bytes for it, binary_data_size says 3072"),
    (GOOD_JSON + b"\0" * 3073, {"Inference-Header-Content-Length": str(len(GOOD_JSON))},
     "the body has 1 binary bytes that no input claims"),
    (GOOD_JSON, {"Inference-Header-Content-Length": "9999"},
     f"Inference-Header-Content-Length is 9999 but the body has {len(GOOD_JSON)} bytes"),
    (GOOD_JSON, {"Inference-Header-Content-Length": "many"},
     "Inference-Header-Content-Length must be an integer, got 'many'"),
    (b"not gzip", {"Content-Encoding": "gzip"},
     "request body is not valid gzip data: Error -3 while decompressing data: incorrect header check"),
    (b"{}", {"Content-Encoding": "br"}, "unsupported Content-Encoding 'br'; use gzip, deflate or none"),
])
def test_protocol_errors_are_400(server_url: str, body: bytes, headers: dict, message: str) -> None:
    response = httpx.post(f"http://{server_url}{INFER}", content=body, headers=headers)
    assert response.status_code == 400
    assert response.json() == {"error": message}


def test_json_values_out_of_range_are_400(server_url: str) -> None:
    data = [256] + [0] * 3071
    response = httpx.post(f"http://{server_url}{INFER}", json={
        "inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": data}]})
    assert response.status_code == 400
    assert response.json() == {"error": "input 'images': values outside the UINT8 range 0..255"}


def test_nested_json_data_is_accepted(server_url: str, predictor: Predictor, images: np.ndarray) -> None:
    response = httpx.post(f"http://{server_url}{INFER}", json={
        "inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": images[:1].tolist()}],
        "outputs": [{"name": "label"}]})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [1], "data": predictor.run(images[:1])["label"].tolist()}]


def test_server_still_healthy_after_protocol_errors(client, server_url: str) -> None:
    httpx.post(f"http://{server_url}{INFER}", content=b"\x00\xff" * 100)
    assert client.is_server_live() and client.is_server_ready()
    assert httpx.get(f"http://{server_url}/healthz").json() == {"status": "ok"}
