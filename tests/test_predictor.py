"""osr.serve.predictor against the tiny exported model (tests/conftest.py: tiny_model_repository)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osr.export.manifest import ManifestError
from osr.serve.decode import decode_to_pil
from osr.serve.predictor import OUTPUT_NAMES, Predictor, PredictorError, TritonBackend, default_model_repository
from osr.serve.results import ROW_FIELDS


@pytest.fixture(scope="module")
def predictor(tiny_model_repository: Path) -> Predictor:
    with Predictor.from_repository(tiny_model_repository, threads=1) as loaded:
        yield loaded


@pytest.fixture
def repository_copy(tiny_model_repository: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "repository"
    shutil.copytree(tiny_model_repository, copy)
    return copy


def _images(count: int, size: tuple[int, int] = (32, 32), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, size[1], size[0], 3), dtype=np.uint8)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_attributes_come_from_the_manifest(predictor: Predictor, tiny_model_repository: Path) -> None:
    manifest = json.loads((tiny_model_repository / "tiny" / "1" / "manifest.json").read_text())
    assert predictor.manifest == manifest
    assert (predictor.name, predictor.version) == ("tiny", 1)
    assert predictor.classes == manifest["classes"]
    assert predictor.image_size == manifest["image_size"] == 32
    assert predictor.threshold == manifest["threshold"]["value"]
    assert predictor.backend.name == "onnxruntime"


def test_newest_version_is_the_default(repository_copy: Path) -> None:
    newer = repository_copy / "tiny" / "7"
    shutil.copytree(repository_copy / "tiny" / "1", newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["version"] = 7
    (newer / "manifest.json").write_text(json.dumps(manifest))
    assert Predictor.from_repository(repository_copy).version == 7
    assert Predictor.from_repository(repository_copy, "tiny", 1).version == 1


def test_run_matches_onnxruntime_directly(predictor: Predictor, tiny_model_repository: Path) -> None:
    import onnxruntime as ort

    batch = _images(5)
    session = ort.InferenceSession(str(tiny_model_repository / "tiny" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    expected = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {"images": batch})))
    outputs = predictor.run(batch)
    assert set(outputs) == set(OUTPUT_NAMES)
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(outputs[name], expected[name], rtol=1e-5, atol=1e-6)
    assert outputs["logits"].shape == (5, 3) and outputs["label"].dtype == np.int64


def test_large_batches_are_split_without_changing_results(tiny_model_repository: Path, predictor: Predictor) -> None:
    batch = _images(7, seed=3)
    small = Predictor.from_repository(tiny_model_repository, max_batch_size=2)
    assert small.max_batch_size == 2
    chunked, whole = small.run(batch), predictor.run(batch)
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-5, atol=1e-6)
    assert predictor.run(batch[:0])["logits"].shape == (0, 3)


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 32, 32, 3), np.float32), np.zeros((2, 16, 16, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)]
)
def test_run_rejects_batches_that_break_the_contract(predictor: Predictor, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8 batch"):
        predictor.run(bad)


def test_rows_follow_the_contract_and_the_graph(predictor: Predictor) -> None:
    batch = _images(6, seed=1)
    outputs = predictor.run(batch)
    rows = predictor.predict_batch(batch, [f"img{i}" for i in range(6)], top_k=2)
    for i, row in enumerate(rows):
        assert tuple(row) == ROW_FIELDS
        assert row["path"] == f"img{i}" and row["status"] == "ok" and row["error"] is None
        label = int(outputs["label"][i])
        assert row["class_index"] == label
        assert row["class_name"] == ("unknown" if label == -1 else predictor.classes[label])
        assert row["unknown"] is (label == -1)
        assert row["unknown"] is (row["score"] < predictor.threshold)
        assert row["score"] == pytest.approx(float(outputs["score"][i]))
        assert row["p_value"] == pytest.approx(float(outputs["p_value"][i]))
        logits = outputs["logits"][i]
        assert [entry["class_index"] for entry in row["top_k"]] == list(np.argsort(-logits, kind="stable")[:2])
        assert row["top_k"][0]["logit"] >= row["top_k"][1]["logit"]
        assert row["top_k"][0]["class_name"] == predictor.classes[row["top_k"][0]["class_index"]]
    json.dumps(rows)  # plain JSON types only
    assert len(predictor.predict_batch(batch[:1], ["x"], top_k=10)[0]["top_k"]) == 3


def test_predict_images_resizes_like_the_manifest_says(predictor: Predictor) -> None:
    large = _images(1, size=(80, 45), seed=2)[0]
    resized = predictor.preprocess(large)
    assert resized.shape == (32, 32, 3)
    [row] = predictor.predict_images([large], ["large"], top_k=3)
    [expected] = predictor.predict_batch(resized[None], ["large"], top_k=3)
    assert row == expected
    with pytest.raises(ValueError, match="names"):
        predictor.predict_images([large], [])


def test_classify_bytes_keeps_order_and_isolates_bad_files(predictor: Predictor) -> None:
    good = _images(2, size=(40, 30), seed=4)
    items = [("a.png", _png(good[0])), ("empty.jpg", b""), ("b.png", _png(good[1])), ("text.jpg", b"hello")]
    rows = predictor.classify_bytes(items, top_k=1)
    assert [row["path"] for row in rows] == ["a.png", "empty.jpg", "b.png", "text.jpg"]
    assert [row["status"] for row in rows] == ["ok", "error", "ok", "error"]
    assert "empty" in rows[1]["error"] and "not an image" in rows[3]["error"]
    assert rows[1]["class_index"] is None and rows[1]["top_k"] == []
    assert rows[0] == predictor.predict_images([good[0]], ["a.png"], top_k=1)[0]
    assert predictor.classify_bytes([("only-bad", b"x")])[0]["status"] == "error"


def test_pixel_limit_is_applied(tiny_model_repository: Path) -> None:
    strict = Predictor.from_repository(tiny_model_repository, max_pixels=100)
    [row] = strict.classify_bytes([("big.png", _png(_images(1, size=(20, 20))[0]))])
    assert row["status"] == "error" and "too large" in row["error"]


def test_tampered_model_file_is_refused(repository_copy: Path) -> None:
    with open(repository_copy / "tiny" / "1" / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ManifestError, match="sha256"):
        Predictor.from_repository(repository_copy)


def _edit_manifest(repository: Path, **changes: object) -> None:
    path = repository / "tiny" / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_wrong_schema_version_is_refused(repository_copy: Path) -> None:
    _edit_manifest(repository_copy, schema_version=99)
    with pytest.raises(ManifestError, match="schema_version"):
        Predictor.from_repository(repository_copy)


def test_unknown_resize_rule_is_refused(repository_copy: Path) -> None:
    _edit_manifest(repository_copy, resize={"rule": "stretch", "interpolation": "nearest"})
    with pytest.raises(ManifestError, match="resize rule"):
        Predictor.from_repository(repository_copy)


def test_missing_repository_and_model_are_refused(tmp_path: Path, tiny_model_repository: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist"):
        Predictor.from_repository(tmp_path / "nowhere")
    with pytest.raises(ManifestError, match="no model 'other'"):
        Predictor.from_repository(tiny_model_repository, "other")


def test_default_repository_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OSR_MODEL_REPOSITORY", str(tmp_path))
    assert default_model_repository() == tmp_path
    monkeypatch.delenv("OSR_MODEL_REPOSITORY")
    assert default_model_repository() == Path(__file__).resolve().parents[1] / "model_repository"


def test_unreachable_triton_server_gives_a_clear_error() -> None:
    pytest.importorskip("tritonclient.http", reason="tritonclient not installed")
    with pytest.raises(PredictorError, match="cannot reach the Triton server"):
        TritonBackend("http://127.0.0.1:9", "tiny", 1, protocol="http", timeout_s=2)
    with pytest.raises(ValueError, match="protocol"):
        TritonBackend("127.0.0.1:9", "tiny", 1, protocol="smtp")


def test_preprocessing_equals_the_training_evaluation_transform(predictor: Predictor, tmp_path: Path) -> None:
    """The same files, read by training's ImageFolder loader and by the predictor's decode + resize,
    give the same pixels: EXIF rotation, transparency, 16-bit grey, palette and odd sizes included."""
    from osr.train.data import load_open_set  # torch side; fine in tests, never in osr.serve

    rng = np.random.default_rng(5)
    folder = tmp_path / "test" / "a"
    folder.mkdir(parents=True)
    files = []
    for i, (width, height) in enumerate([(32, 32), (100, 37), (37, 100), (64, 48), (7, 9), (33, 32)]):
        files.append(folder / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(files[-1])
    rotated = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated.save(folder / "6_rotated.jpg", exif=exif.tobytes())
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), "RGBA").save(folder / "7_alpha.png")
    Image.fromarray((rng.integers(0, 65536, (36, 36))).astype(np.uint16)).save(folder / "8_16bit.png")
    Image.fromarray(rng.integers(0, 256, (20, 44), dtype=np.uint8)).convert("P").save(folder / "9_palette.gif")
    for c in ("a", "b"):  # the loader wants a training set of two classes, each with a test image
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (i, 0, 0)).save(tmp_path / "train" / c / f"{i}.png")
    (tmp_path / "test" / "b").mkdir()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(tmp_path / "test" / "b" / "0.png")

    data = load_open_set("imagefolder", 0, tmp_path, image_size=predictor.image_size, calib_fraction=0.0)
    paths = sorted(folder.iterdir())
    of_a = data.test_known_x[np.asarray(data.test_known_y) == 0]
    assert len(of_a) == len(paths) == 10
    for path, trained in zip(paths, of_a):
        served = predictor.preprocess(decode_to_pil(path.read_bytes()))
        np.testing.assert_array_equal(served, trained, err_msg=path.name)


def test_serving_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import osr.serve, osr.serve.decode, osr.serve.fdr, osr.serve.predictor, osr.serve.results, "
        "osr.serve.score_cli\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'osr.train'))\n"
        "assert not leaked and 'osr.train' not in sys.modules, leaked\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_triton_backend_against_osr_serve_open_inference_protocol(
    tiny_model_repository: Path, predictor: Predictor
) -> None:
    """TritonBackend speaks the Open Inference Protocol; osr-serve speaks it too, so it stands in for
    Triton here (a real tritonserver is exercised by the Triton tests)."""
    pytest.importorskip("tritonclient.http", reason="tritonclient not installed")
    uvicorn = pytest.importorskip("uvicorn", reason="uvicorn not installed")
    import socket
    import threading
    import time
    import urllib.request

    from osr.serve.app import create_app
    from osr.serve.settings import Settings

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(Settings(model_repository=tiny_model_repository, threads=1))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "osr-serve did not become ready"
            time.sleep(0.1)
        remote = Predictor.from_repository(tiny_model_repository, triton_url=f"http://127.0.0.1:{port}",
                                           max_batch_size=4)
        assert remote.backend.name == "triton" and remote.max_batch_size == 4
        batch = _images(6, seed=7)
        local, over_http = predictor.run(batch), remote.run(batch)
        for name in OUTPUT_NAMES:
            np.testing.assert_allclose(over_http[name], local[name], rtol=1e-5, atol=1e-6)
        [row] = remote.classify_bytes([("a.png", _png(batch[0]))])
        [expected] = predictor.classify_bytes([("a.png", _png(batch[0]))])
        assert row["class_index"] == expected["class_index"] and row["p_value"] == expected["p_value"]
        assert row["score"] == pytest.approx(expected["score"], rel=1e-5, abs=1e-6)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(3) as pool:  # the HTTP client is per thread (gevent)
            for scores in pool.map(lambda _: remote.run(batch)["score"], range(6)):
                np.testing.assert_allclose(scores, local["score"], rtol=1e-5, atol=1e-6)
        remote.close()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
