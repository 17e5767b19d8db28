"""osr-serve /v1/classify, health, readiness, API key and metrics, through FastAPI's TestClient.

The bad-input corpus is generated here (no committed files): every case pins the status code and
the exact message, and the service must still be healthy afterwards.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr
from prometheus_client.parser import text_string_to_metric_families

from osr.serve.app import create_app
from osr.serve.card import model_card
from osr.serve.decode import DecodeError, decode_image
from osr.serve.predictor import Predictor
from osr.serve.settings import Settings

MAX_FILES = 4
MAX_BODY = 256 * 1024


# -- corpus ---------------------------------------------------------------------------------------

def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (8-bit RGB) and that holds no pixel data."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def sixteen_bit_png() -> bytes:
    values = (np.arange(40 * 30, dtype=np.uint32) * 50 % 65536).astype(np.uint16).reshape(30, 40)
    image = Image.fromarray(values)
    assert image.mode.startswith("I")  # really 16-bit
    return encode(image, "PNG")


def palette_png_with_transparency() -> bytes:
    image = Image.new("P", (24, 16), 0)
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    image.paste(1, (0, 0, 12, 16))
    image.paste(2, (12, 0, 24, 8))
    return encode(image, "PNG", transparency=0)


def animated_gif() -> bytes:
    frames = [noise(20, 20, seed).convert("P") for seed in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


GOOD_IMAGES = {
    "sixteen_bit.png": sixteen_bit_png,
    "cmyk.jpg": lambda: encode(Image.new("CMYK", (30, 20), (10, 200, 30, 40)), "JPEG"),
    "palette_transparent.png": palette_png_with_transparency,
    "animated.gif": animated_gif,
    "one_pixel.png": lambda: encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
    "photo.jpg": lambda: encode(noise(48, 40, 1), "JPEG", quality=90),
}

BAD_IMAGES = {  # name -> (bytes, the decoder's reason)
    "empty.jpg": (lambda: b"", "empty"),
    "notes.jpg": (lambda: b"these are my shopping notes, not a picture\n" * 3, "not_an_image"),
    "truncated.jpg": (lambda: encode(noise(64, 64), "JPEG")[:400], "truncated"),
    "truncated.png": (lambda: encode(noise(64, 64), "PNG")[:300], "truncated"),
    "huge.png": (lambda: png_header_only(50_000, 50_000), "too_large"),
}


def decoder_message(data: bytes) -> tuple[str, str]:
    with pytest.raises(DecodeError) as info:
        decode_image(data, Settings.model_fields["max_pixels"].default)
    return info.value.reason, str(info.value)


# -- fixtures -------------------------------------------------------------------------------------

def wait_ready(client: TestClient, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.02)


@pytest.fixture(scope="module")
def settings(tiny_model_repository: Path) -> Settings:
    return Settings(model_repository=tiny_model_repository, max_files=MAX_FILES, max_body_bytes=MAX_BODY)


@pytest.fixture(scope="module")
def client(settings: Settings):
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="module")
def predictor(tiny_model_repository: Path) -> Predictor:
    return Predictor.from_repository(tiny_model_repository)


def post_files(client: TestClient, items: list[tuple[str, bytes]], field: str = "files", **kwargs):
    return client.post("/v1/classify", files=[(field, (name, data, "application/octet-stream"))
                                              for name, data in items], **kwargs)


def metric(client: TestClient, name: str, labels: dict[str, str] | None = None) -> float:
    """A sample's value from /metrics (0 when absent)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return sample.value
    return 0.0


# -- /v1/classify ---------------------------------------------------------------------------------

def test_classify_matches_predictor(client: TestClient, predictor: Predictor) -> None:
    items = [(name, make()) for name, make in GOOD_IMAGES.items()]
    response = post_files(client, items[:MAX_FILES])
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == ("tiny", 1)
    assert body["results"] == predictor.classify_bytes(items[:MAX_FILES], top_k=5)
    rest = post_files(client, items[MAX_FILES:], params={"top_k": 2})
    assert rest.json()["results"] == predictor.classify_bytes(items[MAX_FILES:], top_k=2)


@pytest.mark.parametrize("name", list(GOOD_IMAGES))
def test_unusual_but_valid_images_are_classified(client: TestClient, name: str) -> None:
    response = post_files(client, [(name, GOOD_IMAGES[name]())])
    assert response.status_code == 200, response.text
    [row] = response.json()["results"]
    assert row["status"] == "ok" and row["error"] is None and row["path"] == name
    assert row["class_index"] in (-1, 0, 1, 2)
    assert row["class_name"] == ("unknown" if row["class_index"] == -1 else ["cat", "dog", "ship"][row["class_index"]])
    assert row["unknown"] == (row["class_index"] == -1)
    assert 0 < row["p_value"] <= 1
    assert [entry["class_index"] for entry in row["top_k"]] == sorted(
        range(3), key=lambda c: -next(e["logit"] for e in row["top_k"] if e["class_index"] == c))


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_a_file_that_is_not_an_image_is_415_with_its_reason(client: TestClient, name: str) -> None:
    make, reason = BAD_IMAGES[name]
    data = make()
    decoder_reason, message = decoder_message(data)
    assert decoder_reason == reason
    response = post_files(client, [(name, data)])
    assert response.status_code == 415
    assert response.json() == {"detail": f"no file is a usable image: {name}: {message}"}


def test_fixed_decoder_messages(client: TestClient) -> None:
    """The messages a user sees most often, pinned word for word."""
    response = post_files(client, [("empty.jpg", b""), ("notes.jpg", b"plain text\n")])
    assert response.status_code == 415
    assert response.json() == {"detail": "no file is a usable image: empty.jpg: empty file (0 bytes); "
                                         "notes.jpg: not an image: the data is in none of the accepted formats "
                                         "(JPEG, PNG, GIF, BMP, WEBP, TIFF, PPM)"}


def test_bad_files_become_error_rows_next_to_good_ones(client: TestClient) -> None:
    good = GOOD_IMAGES["photo.jpg"]()
    truncated = BAD_IMAGES["truncated.png"][0]()
    response = post_files(client, [("a.jpg", good), ("b.png", truncated), ("c.jpg", b""), ("d.jpg", good)])
    assert response.status_code == 200
    rows = response.json()["results"]
    assert [row["path"] for row in rows] == ["a.jpg", "b.png", "c.jpg", "d.jpg"]
    assert [row["status"] for row in rows] == ["ok", "error", "error", "ok"]
    assert rows[1]["error"] == decoder_message(truncated)[1]
    assert rows[2] == {"path": "c.jpg", "status": "error", "error": "empty file (0 bytes)", "class_index": None,
                       "class_name": None, "score": None, "p_value": None, "unknown": None, "top_k": []}
    assert rows[0]["score"] == rows[3]["score"]


def test_empty_body_is_422(client: TestClient) -> None:
    response = client.post("/v1/classify")
    assert response.status_code == 422
    assert response.json() == {"detail": "expected a multipart/form-data body with images in the field 'files', "
                                         "got Content-Type 'none'"}


def test_json_body_is_422(client: TestClient) -> None:
    response = client.post("/v1/classify", json={"files": ["a.jpg"]})
    assert response.status_code == 422
    assert response.json() == {"detail": "expected a multipart/form-data body with images in the field 'files', "
                                         "got Content-Type 'application/json'"}


def test_empty_multipart_form_is_422(client: TestClient) -> None:
    response = client.post("/v1/classify", content=b"",
                           headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert response.status_code == 422
    assert response.json() == {"detail": "no files: send each image as a file in the multipart field 'files'"}


def test_multipart_without_boundary_is_422(client: TestClient) -> None:
    response = client.post("/v1/classify", content=b"abc", headers={"content-type": "multipart/form-data"})
    assert response.status_code == 422
    assert response.json() == {"detail": "malformed multipart body: Missing boundary in multipart."}


def test_wrong_form_field_is_422(client: TestClient) -> None:
    response = post_files(client, [("a.jpg", GOOD_IMAGES["photo.jpg"]())], field="file")
    assert response.status_code == 422
    assert response.json() == {"detail": "no files: send each image as a file in the multipart field 'files' "
                                         "(the form has 'file')"}


def test_text_value_in_files_field_is_422(client: TestClient) -> None:
    response = client.post("/v1/classify", data={"files": "cat.jpg"}, files=[("other", ("x", b"x"))])
    assert response.status_code == 422
    assert response.json() == {"detail": "the field 'files' must hold files, item 0 is a text value"}


def test_bad_top_k_is_422(client: TestClient) -> None:
    response = post_files(client, [("a.jpg", GOOD_IMAGES["photo.jpg"]())], params={"top_k": -1})
    assert response.status_code == 422
    assert response.json() == {"detail": "invalid request: query.top_k: Input should be greater than or equal to 0"}


def test_too_many_files_is_413(client: TestClient) -> None:
    one_pixel = GOOD_IMAGES["one_pixel.png"]()
    response = post_files(client, [(f"{i}.png", one_pixel) for i in range(MAX_FILES + 1)])
    assert response.status_code == 413
    assert response.json() == {"detail": f"too many files: at most {MAX_FILES} per request"}


def test_oversized_body_is_413_by_content_length(client: TestClient) -> None:
    response = post_files(client, [("big.png", b"\0" * (MAX_BODY + 1))])
    assert response.request.headers["content-length"]
    assert response.status_code == 413
    assert response.json() == {"detail": f"request body is larger than the limit of {MAX_BODY} bytes"}


def test_oversized_body_is_413_while_streaming(client: TestClient) -> None:
    def chunks():
        for _ in range(MAX_BODY // 8192 + 2):
            yield b"\0" * 8192

    response = client.post("/v1/classify", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json() == {"detail": f"request body is larger than the limit of {MAX_BODY} bytes"}


def test_oversized_oip_request_is_413_with_an_oip_error_body(client: TestClient) -> None:
    response = client.post("/v2/models/tiny/infer", content=b"\0" * (MAX_BODY + 1))
    assert response.status_code == 413
    assert response.json() == {"error": f"request body is larger than the limit of {MAX_BODY} bytes"}


def test_garbage_json_to_oip_infer_is_400(client: TestClient) -> None:
    response = client.post("/v2/models/tiny/infer", content=b"{not json",
                           headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"error": "request is not valid JSON: Expecting property name enclosed in double "
                                        "quotes: line 1 column 2 (char 1)"}


def test_unknown_route_is_404(client: TestClient) -> None:
    response = client.get("/v1/nothing")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}


def test_service_is_healthy_after_bad_input(client: TestClient) -> None:
    for make, _ in BAD_IMAGES.values():
        post_files(client, [("x", make())])
    client.post("/v2/models/tiny/infer", content=b"\xff\xfe garbage")
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model": "tiny", "version": 1}
    assert post_files(client, [("a.jpg", GOOD_IMAGES["photo.jpg"]())]).status_code == 200


# -- readiness ------------------------------------------------------------------------------------

def test_readyz_is_503_until_loaded_and_warmed_up(settings: Settings) -> None:
    release = threading.Event()
    warmed = []

    class CountingPredictor(Predictor):
        def warmup(self) -> None:
            super().warmup()
            warmed.append(True)

    def slow_load() -> Predictor:
        assert release.wait(30)
        return CountingPredictor.from_repository(settings.model_repository)

    with TestClient(create_app(settings, predictor_factory=slow_load)) as client:
        try:
            response = client.get("/readyz")
            assert response.status_code == 503
            assert response.json() == {"detail": "not ready: model is still loading"}
            assert client.get("/v2/health/ready").status_code == 503
            assert client.get("/healthz").status_code == 200
            assert client.get("/v2/health/live").json() == {"live": True}
            busy = post_files(client, [("a.jpg", GOOD_IMAGES["photo.jpg"]())])
            assert busy.status_code == 503
            assert busy.json() == {"detail": "not ready: model is still loading"}
        finally:
            release.set()
        wait_ready(client)
        assert warmed == [True]
        assert client.get("/v2/health/ready").json() == {"ready": True}


def test_load_failure_is_reported_by_readyz(settings: Settings) -> None:
    def broken() -> Predictor:
        raise RuntimeError("backend unreachable")

    with TestClient(create_app(settings, predictor_factory=broken)) as client:
        deadline = time.monotonic() + 10
        while "failed" not in client.get("/readyz").json()["detail"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {"detail": "not ready: model failed to load: RuntimeError: backend unreachable"}
        assert client.get("/healthz").status_code == 200


# -- API key --------------------------------------------------------------------------------------

def test_api_key(settings: Settings) -> None:
    secured = settings.model_copy(update={"api_key": SecretStr("s3cret")})
    photo = [("a.jpg", GOOD_IMAGES["photo.jpg"]())]
    with TestClient(create_app(secured)) as client:
        wait_ready(client)
        missing = post_files(client, photo)
        assert missing.status_code == 401
        assert missing.json() == {"detail": "missing API key: send it in the X-API-Key header or as "
                                            "'Authorization: Bearer <key>'"}
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = post_files(client, photo, headers={"X-API-Key": "guess"})
        assert (wrong.status_code, wrong.json()) == (401, {"detail": "invalid API key"})
        wrong_bearer = post_files(client, photo, headers={"Authorization": "Bearer guess"})
        assert (wrong_bearer.status_code, wrong_bearer.json()) == (401, {"detail": "invalid API key"})
        assert post_files(client, photo, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert post_files(client, photo, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        oip = client.get("/v2/models/tiny")
        assert (oip.status_code, oip.json()) == (401, {"error": "missing API key: send it in the X-API-Key header "
                                                                "or as 'Authorization: Bearer <key>'"})
        assert client.get("/v2/models/tiny", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/v1/model").status_code == 401
        assert client.get("/v1/model", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/").status_code == 200  # the demo page itself holds no data; it asks for the key
        # probes and scrapers need no key
        for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics"):
            assert client.get(path).status_code == 200, path


# -- metrics --------------------------------------------------------------------------------------

def test_metrics_move(client: TestClient) -> None:
    route = {"route": "/v1/classify", "method": "POST", "status": "200"}
    before = {
        "requests": metric(client, "osr_requests_total", route),
        "rejected": metric(client, "osr_requests_total", {"route": "/v1/classify", "status": "415"}),
        "decisions": metric(client, "osr_decisions_total", {"decision": "known"})
        + metric(client, "osr_decisions_total", {"decision": "unknown"}),
        "scores": metric(client, "osr_score_count"),
        "batches": metric(client, "osr_batch_size_count"),
        "latency": metric(client, "osr_request_duration_seconds_count", {"route": "/v1/classify"}),
        "file_errors": metric(client, "osr_classify_files_total", {"status": "error"}),
        "too_large": metric(client, "osr_requests_total", {"route": "/v1/classify", "status": "413"}),
    }
    photo = GOOD_IMAGES["photo.jpg"]()
    assert post_files(client, [("a.jpg", photo), ("b.jpg", photo), ("c.jpg", b"")]).status_code == 200
    assert post_files(client, [("c.jpg", b"")]).status_code == 415
    assert metric(client, "osr_requests_total", route) == before["requests"] + 1
    assert metric(client, "osr_requests_total", {"route": "/v1/classify", "status": "415"}) == before["rejected"] + 1
    decisions = metric(client, "osr_decisions_total", {"decision": "known"}) + metric(
        client, "osr_decisions_total", {"decision": "unknown"})
    assert decisions == before["decisions"] + 2
    assert metric(client, "osr_score_count") == before["scores"] + 2
    assert metric(client, "osr_batch_size_count") == before["batches"] + 1
    assert metric(client, "osr_request_duration_seconds_count", {"route": "/v1/classify"}) == before["latency"] + 2
    assert metric(client, "osr_classify_files_total", {"status": "error"}) == before["file_errors"] + 2
    # answered by the body limit before routing, still counted under its route
    assert post_files(client, [("big.png", b"\0" * (MAX_BODY + 1))]).status_code == 413
    assert metric(client, "osr_requests_total", {"route": "/v1/classify", "status": "413"}) == before["too_large"] + 1


def test_monitor_gauges_follow_the_decisions(client: TestClient) -> None:
    """The unknown-flag monitor (serve/monitor.py) in /metrics: the gauges are the window's summary."""
    monitor = client.app.state.service.metrics.monitor
    before = metric(client, "osr_monitor_window_images")
    photo = GOOD_IMAGES["photo.jpg"]()
    assert post_files(client, [("a.jpg", photo), ("b.jpg", photo), ("c.png", GOOD_IMAGES["one_pixel.png"]())]
                      ).status_code == 200
    summary = monitor.summary()
    assert metric(client, "osr_monitor_window_images") == summary.images == min(before + 3, monitor.window)
    assert metric(client, "osr_monitor_unknown_rate") == pytest.approx(summary.unknown_rate)
    assert metric(client, "osr_monitor_unknown_rate_band", {"bound": "high"}) == pytest.approx(summary.band[1])
    assert metric(client, "osr_monitor_uniformity_images") == summary.uniformity_images
    assert metric(client, "osr_monitor_ks_statistic") == pytest.approx(summary.ks_statistic)
    assert metric(client, "osr_monitor_ks_p_value") == pytest.approx(summary.ks_p_value)
    threshold = client.app.state.service.predictor.manifest["threshold"]
    assert metric(client, "osr_monitor_alpha") == threshold["target_false_rejection"] == 0.05
    assert metric(client, "osr_monitor_expected_unknown_rate") == pytest.approx(
        threshold["rank"] / (threshold["n_calibration"] + 1))
    bounds = [sample.labels["le"] for family in text_string_to_metric_families(client.get("/metrics").text)
              for sample in family.samples if sample.name == "osr_p_value_bucket"]
    assert bounds == [str(round(0.05 * i, 2)) for i in range(1, 21)] + ["+Inf"]  # 0.05 wide: flat when uniform


def test_model_card(client: TestClient, predictor: Predictor) -> None:
    response = client.get("/v1/model")
    assert response.status_code == 200
    card = response.json()
    assert card == model_card(predictor.manifest)
    manifest = predictor.manifest
    assert (card["name"], card["version"], card["classes"]) == ("tiny", 1, ["cat", "dog", "ship"])
    assert card["alpha"] == manifest["threshold"]["target_false_rejection"] == 0.05
    assert card["test"]["auroc"] == manifest["metrics"]["auroc"]
    assert card["test"]["false_rejection_rate"] == manifest["metrics"]["false_rejection"]["false_rejection_rate"]
    assert card["expected_unknown_rate"] == manifest["threshold"]["rank"] / (manifest["threshold"]["n_calibration"] + 1)


def test_demo_page_is_served_at_the_root(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert 'src="static/demo.js"' in response.text
    assert response.headers["content-security-policy"].startswith("default-src 'self'")


def test_openapi_docs_describe_classify(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["files"]["items"]["format"] == "binary"


def test_client_that_disconnects_mid_upload_is_not_a_server_error(client: TestClient, caplog) -> None:
    """A client hanging up mid-body (wrk stopping, a cancelled upload) gets no traceback logged."""
    app = client.app
    boundary = "b0"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/classify", "raw_path": b"/v1/classify", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
             "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                         (b"content-length", b"100000")]}
    messages = iter([{"type": "http.request", "body": head, "more_body": True}, {"type": "http.disconnect"}])
    sent: list[dict] = []

    async def receive() -> dict:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict) -> None:
        sent.append(message)

    import asyncio

    with caplog.at_level("ERROR"):
        asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 499
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert client.get("/healthz").status_code == 200
