"""A real tritonserver (pip wheel nvidia-pytriton, CPU, stand-in onnxruntime backend) serving the
exported tiny model: HTTP and gRPC answers, dynamic batching, the predictor's Triton backend and
`osr-score --triton-url` all equal in-process onnxruntime on the same images.

Needs the venv made by `bash .ci/setup_triton.sh` (found through $OSR_TRITON_VENV, default
~/.cache/osr/triton-venv). Without it these tests skip, unless OSR_REQUIRE_TRITON=1 (CI), where
they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.http", reason="tritonclient[http,grpc] is not installed (pip install 'osr[serve]')")
pytest.importorskip("tritonclient.grpc", reason="tritonclient[http,grpc] is not installed (pip install 'osr[serve]')")

import onnxruntime as ort  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from osr.export.manifest import DEFAULT_MODEL_FILE  # noqa: E402
from osr.export.triton_config import render_config  # noqa: E402
from osr.serve.in_thread import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUN_LOCAL = ROOT / "serve" / "triton_backend" / "run_local.sh"
OUTPUTS = ("logits", "score", "label", "p_value")
BATCHING_MODEL = "tiny_batching"
BATCHING_SIZE = 4
KNN_MODEL = "tiny_knn"
START_TIMEOUT_S = 90


def triton_venv() -> Path:
    return Path(os.environ.get("OSR_TRITON_VENV") or Path.home() / ".cache" / "osr" / "triton-venv")


def tritonserver_missing() -> str | None:
    """Why no tritonserver can be started, or None when it can."""
    venv = triton_venv()
    if not (venv / "bin" / "python").exists():
        return f"no Triton venv at {venv}; create it with `bash .ci/setup_triton.sh` (or set OSR_TRITON_VENV)"
    if not list(venv.glob("lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver")):
        return f"{venv} has no tritonserver (nvidia-pytriton); rerun `bash .ci/setup_triton.sh`"
    return None


@dataclass
class TritonServer:
    http_url: str
    grpc_url: str
    metrics_url: str
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)  # the script exec'd tritonserver: this pid is the server
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the server and its Python stubs
        process.wait(timeout=10)


def _wait_ready(process: subprocess.Popen, server: TritonServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"tritonserver exited with {process.returncode} before it was ready:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    _stop(process)
    pytest.fail(f"tritonserver not ready after {START_TIMEOUT_S} s:\n{server.log_tail()}")


@pytest.fixture(scope="session")
def triton_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """tritonserver on free 127.0.0.1 ports, started by serve/triton_backend/run_local.sh.

    Repositories: the exported tiny_model_repository as it is, plus a second repository with a
    copy of the model, `tiny_batching`, whose CPU config waits up to 5 s for a batch of
    BATCHING_SIZE, so dynamic batching can be observed deterministically, and a DEFAULT_MODEL file.
    """
    reason = tritonserver_missing()
    if reason:
        if os.environ.get("OSR_REQUIRE_TRITON") == "1":
            pytest.fail(f"OSR_REQUIRE_TRITON=1 but {reason}")
        pytest.skip(reason)
    tiny_model_repository: Path = request.getfixturevalue("tiny_model_repository")  # only once a server can run
    extra = tmp_path_factory.mktemp("triton_extra_repository")
    batching_dir = extra / BATCHING_MODEL
    shutil.copytree(tiny_model_repository / "tiny" / "1", batching_dir / "1")
    manifest = json.loads((batching_dir / "1" / "manifest.json").read_text())
    (batching_dir / "configs").mkdir()
    (batching_dir / "configs" / "cpu.pbtxt").write_text(
        render_config(
            {**manifest, "name": BATCHING_MODEL}, kind="cpu",
            preferred_batch_sizes=[BATCHING_SIZE], max_queue_delay_us=5_000_000,
        )
    )
    (extra / DEFAULT_MODEL_FILE).write_text(BATCHING_MODEL)  # Triton must ignore osr's marker file
    _export_knn_model(extra, request.getfixturevalue("tiny_export_inputs"))
    ports = [free_port() for _ in range(3)]
    server = TritonServer(
        http_url=f"127.0.0.1:{ports[0]}",
        grpc_url=f"127.0.0.1:{ports[1]}",
        metrics_url=f"127.0.0.1:{ports[2]}",
        log_path=tmp_path_factory.mktemp("triton_log") / "tritonserver.log",
    )
    command = [
        "bash", str(RUN_LOCAL), str(tiny_model_repository),
        "--model-repository", str(extra),
        "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
    ]
    with open(server.log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "OSR_TRITON_VENV": str(triton_venv())}, start_new_session=True,
        )
    try:
        _wait_ready(process, server)
        yield server
    finally:
        _stop(process)


def _export_knn_model(repository: Path, make_inputs) -> None:
    """The tiny model exported with --score knn (a feature bank and TopK in the graph) as KNN_MODEL."""
    from osr.export.pipeline import ExportOptions, export_to_repository

    inputs = make_inputs()
    inputs.train_x = np.random.default_rng(3).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    inputs.train_y = np.repeat(np.arange(3), 10)
    export_to_repository(inputs, ExportOptions(repository=repository, name=KNN_MODEL, version=1, score_function="knn",
                                               knn_k=3, report=False))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def in_process(tiny_model_repository: Path):
    session = ort.InferenceSession(
        str(tiny_model_repository / "tiny" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(OUTPUTS, session.run(list(OUTPUTS), {"images": batch})))

    return run


def _assert_same_answers(served: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    batch = expected["logits"].shape[0]
    assert served["logits"].shape == expected["logits"].shape
    for name in ("score", "label", "p_value"):
        # config.pbtxt declares per-image scalars as dims [1] (reshape []), so Triton answers [N, 1].
        assert served[name].shape == (batch, 1), name
        assert served[name].dtype == expected[name].dtype, name
    np.testing.assert_allclose(served["logits"], expected["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(served["score"][:, 0], expected["score"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(served["p_value"][:, 0], expected["p_value"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(served["label"][:, 0], expected["label"])


def _infer(module, client, model: str, batch: np.ndarray, outputs=OUTPUTS) -> dict[str, np.ndarray]:
    request = module.InferInput("images", list(batch.shape), "UINT8")
    request.set_data_from_numpy(batch)
    result = client.infer(model, [request], outputs=[module.InferRequestedOutput(name) for name in outputs])
    return {name: result.as_numpy(name) for name in outputs}


def test_a_knn_scored_export_serves_the_same_answers(triton_server: TritonServer, images: np.ndarray,
                                                     tmp_path_factory: pytest.TempPathFactory, tiny_export_inputs) -> None:
    client = httpclient.InferenceServerClient(triton_server.http_url)
    assert client.is_model_ready(KNN_MODEL, "1")
    repository = tmp_path_factory.mktemp("knn_again")
    _export_knn_model(repository, tiny_export_inputs)  # deterministic: the same graph as the served one
    session = ort.InferenceSession(str(repository / KNN_MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = dict(zip(OUTPUTS, session.run(list(OUTPUTS), {"images": images})))
    _assert_same_answers(_infer(httpclient, client, KNN_MODEL, images), expected)


def test_server_loads_the_exported_cpu_config(triton_server: TritonServer) -> None:
    client = httpclient.InferenceServerClient(triton_server.http_url)
    assert client.is_server_live() and client.is_model_ready("tiny", "1")
    config = client.get_model_config("tiny")
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] == 64
    assert [group["kind"] for group in config["instance_group"]] == ["KIND_CPU"]
    metadata = client.get_model_metadata("tiny")
    assert [tensor["name"] for tensor in metadata["outputs"]] == list(OUTPUTS)


def test_http_answers_equal_in_process(triton_server: TritonServer, images: np.ndarray, in_process) -> None:
    client = httpclient.InferenceServerClient(triton_server.http_url)
    _assert_same_answers(_infer(httpclient, client, "tiny", images), in_process(images))


def test_grpc_answers_equal_in_process(triton_server: TritonServer, images: np.ndarray, in_process) -> None:
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    _assert_same_answers(_infer(grpcclient, client, "tiny", images), in_process(images))
    single = images[:1]
    _assert_same_answers(_infer(grpcclient, client, "tiny", single), in_process(single))


def test_only_requested_outputs_come_back(triton_server: TritonServer, images: np.ndarray, in_process) -> None:
    client = httpclient.InferenceServerClient(triton_server.http_url)
    request = httpclient.InferInput("images", list(images.shape), "UINT8")
    request.set_data_from_numpy(images)
    result = client.infer("tiny", [request], outputs=[httpclient.InferRequestedOutput("label")])
    assert [output["name"] for output in result.get_response()["outputs"]] == ["label"]
    np.testing.assert_array_equal(result.as_numpy("label")[:, 0], in_process(images)["label"])


def test_dynamic_batching_runs_concurrent_requests_as_one_batch(
    triton_server: TritonServer, images: np.ndarray, in_process
) -> None:
    singles = [images[i : i + 1] for i in range(BATCHING_SIZE)]
    answers: dict[int, dict[str, np.ndarray]] = {}

    def send(position: int) -> None:
        client = grpcclient.InferenceServerClient(triton_server.grpc_url)
        answers[position] = _infer(grpcclient, client, BATCHING_MODEL, singles[position])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(BATCHING_SIZE)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(answers) == list(range(BATCHING_SIZE))
    for position, single in enumerate(singles):
        _assert_same_answers(answers[position], in_process(single))
    stats = httpclient.InferenceServerClient(triton_server.http_url).get_inference_statistics(BATCHING_MODEL)
    model_stats = stats["model_stats"][0]
    assert model_stats["inference_stats"]["success"]["count"] == BATCHING_SIZE
    assert [(entry["batch_size"], entry["compute_infer"]["count"]) for entry in model_stats["batch_stats"]] == [
        (BATCHING_SIZE, 1)
    ]


def test_bad_request_is_refused_and_server_keeps_serving(triton_server: TritonServer, images: np.ndarray, in_process) -> None:
    client = httpclient.InferenceServerClient(triton_server.http_url)
    wrong_type = httpclient.InferInput("images", list(images.shape), "FP32")
    wrong_type.set_data_from_numpy(images.astype(np.float32))
    with pytest.raises(InferenceServerException, match="(?i)data.?type|datatype"):
        client.infer("tiny", [wrong_type])
    wrong_shape = httpclient.InferInput("images", [1, 16, 16, 3], "UINT8")
    wrong_shape.set_data_from_numpy(np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(InferenceServerException, match="(?i)shape"):
        client.infer("tiny", [wrong_shape])
    _assert_same_answers(_infer(httpclient, client, "tiny", images), in_process(images))


def test_metrics_endpoint_counts_inferences(triton_server: TritonServer, images: np.ndarray) -> None:
    client = httpclient.InferenceServerClient(triton_server.http_url)
    _infer(httpclient, client, "tiny", images[:2])
    with urllib.request.urlopen(f"http://{triton_server.metrics_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("nv_inference_request_success{") and 'model="tiny"' in line
    ]
    assert counts and counts[0] >= 1


# -- osr.serve on top of Triton ---------------------------------------------------------------------

def _comparable(rows: list[dict]) -> list[tuple]:
    return [
        (row["path"], row["status"], row["class_index"], row["class_name"], row["unknown"],
         round(row["score"], 4), round(row["p_value"], 5), [entry["class_index"] for entry in row["top_k"]])
        for row in rows
    ]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_predictor_triton_backend_equals_in_process(
    triton_server: TritonServer, tiny_model_repository: Path, images: np.ndarray, protocol: str
) -> None:
    from osr.serve.predictor import Predictor

    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    names = [f"image-{i}" for i in range(len(images))]
    with Predictor.from_repository(tiny_model_repository) as local:
        expected = local.predict_batch(images, names, top_k=3)
    with Predictor.from_repository(tiny_model_repository, triton_url=url, triton_protocol=protocol) as remote:
        assert remote.backend.name == "triton"
        assert remote.max_batch_size == 64  # read from the served config
        served = remote.predict_batch(images, names, top_k=3)
    assert _comparable(served) == _comparable(expected)


def test_score_cli_with_triton_url_equals_in_process(
    triton_server: TritonServer, tiny_model_repository: Path, images: np.ndarray, tmp_path: Path
) -> None:
    from PIL import Image

    from osr.serve.score_cli import main as score_main

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    (folder / "broken.png").write_bytes(b"not an image")

    def score(out: Path, *extra: str) -> list[dict]:
        code = score_main([str(folder), "--out", str(out), "--model-repository", str(tiny_model_repository), *extra])
        assert code == 3  # the broken file is an error row, the others are scored
        return sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda row: row["path"])

    local = score(tmp_path / "local.jsonl")
    remote = score(tmp_path / "triton.jsonl", "--triton-url", f"http://{triton_server.http_url}")
    assert len(remote) == len(images) + 1
    assert _comparable([row for row in remote if row["status"] == "ok"]) == _comparable(
        [row for row in local if row["status"] == "ok"]
    )
    assert [row["path"] for row in remote if row["status"] == "error"] == [str(folder / "broken.png")]
