"""tritonserver (the pip wheel, CPU, the stand-in onnxruntime backend of serve/triton_backend)
serving the bundled repository, over HTTP and gRPC, with 1 and 8 concurrent clients sending one
pre-resized CIFAR-10 image per request, fp32 and int8; requests/s, p50/p99, errors, and the
average executed batch from Triton's metrics (delta nv_inference_count / delta
nv_inference_exec_count), beside a bare in-process onnxruntime single-image loop.

    python bench/perf_triton.py [--triton-venv ~/.cache/osr/triton-venv]

The clients run in this process, on the same 2 cores as the server. Configurations run round
robin; each round is one quiet window (background training paused with SIGSTOP, resumed after).
Caveat: this is the pip wheel's tritonserver with osr's stand-in Python backend running
onnxruntime, on CPU, handed raw uint8 tensors (no JPEG decoding), not the NGC container's C++
onnxruntime or TensorRT backends. Writes bench/results/perf-lite0/triton.json.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image

from osr.export.manifest import OUTPUT_NAMES

from perf_common import (MODELS, REPOSITORY, ROOT, cifar_jpegs, free_port, latency_ms, quiet_machine, rate, save,
                         summary, version_dir, wait_until_idle)

RUN_LOCAL = ROOT / "serve" / "triton_backend" / "run_local.sh"


def start_triton(venv: Path, log_path: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    cmd = ["bash", str(RUN_LOCAL), str(REPOSITORY), "--http-port", str(ports["http"]),
           "--grpc-port", str(ports["grpc"]), "--metrics-port", str(ports["metrics"])]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "OSR_TRITON_VENV": str(venv)}, start_new_session=True)
    urls = {k: f"127.0.0.1:{p}" for k, p in ports.items()}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"tritonserver exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://{urls['http']}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return process, urls
        except OSError:
            pass
        time.sleep(0.3)
    stop(process)
    raise SystemExit(f"tritonserver not ready in 120 s:\n{log_path.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def counters(metrics_url: str, model: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=5).read().decode()
    out = {}
    for name in ("nv_inference_count", "nv_inference_exec_count", "nv_inference_request_success"):
        match = re.search(rf'^{name}{{[^}}]*model="{re.escape(model)}"[^}}]*}} (\S+)$', text, re.M)
        out[name] = float(match.group(1)) if match else float("nan")
    return out


def load(protocol: str, url: str, model: str, images: np.ndarray, concurrency: int, seconds: float) -> dict:
    """``concurrency`` threads, each with its own client, send one-image requests for ``seconds``."""
    module = httpclient if protocol == "http" else grpcclient
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def client(index: int) -> None:
        c = module.InferenceServerClient(url)
        outputs = [module.InferRequestedOutput(n) for n in OUTPUT_NAMES]
        mine, errs, i = [], [], index
        start.wait()
        while time.perf_counter() < stop_at[0]:
            x = module.InferInput("images", [1, *images.shape[1:]], "UINT8")
            x.set_data_from_numpy(images[i % len(images)][None])
            i += concurrency
            t0 = time.perf_counter()
            try:
                result = c.infer(model, [x], outputs=outputs)
                if result.as_numpy("label").shape[0] != 1:
                    errs.append("wrong answer shape")
            except Exception as exc:  # tritonclient raises InferenceServerException and socket errors
                errs.append(repr(exc)[:200])
            mine.append(time.perf_counter() - t0)
        c.close()
        with lock:
            latencies.extend(mine)
            errors.extend(errs)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = latency_ms(latencies)
    return {"requests": len(latencies), "errors": len(errors), "first_errors": errors[:3],
            "requests_per_s": len(latencies) / wall, "p50_ms": lat["p50"], "p99_ms": lat["p99"]}


def run_round(a: argparse.Namespace, r: int, configs: list, urls: dict, images: np.ndarray,
              runs: dict[str, list[dict]], bare: dict[str, list[float]]) -> None:
    """Every configuration once (rotated order), then the bare onnxruntime loops."""
    for kind, protocol, concurrency in configs[r % len(configs):] + configs[:r % len(configs)]:
        model = MODELS[kind]
        before = counters(urls["metrics"], model)
        result = load(protocol, urls[protocol], model, images, concurrency, a.seconds)
        time.sleep(0.1)
        after = counters(urls["metrics"], model)
        d_count = after["nv_inference_count"] - before["nv_inference_count"]
        d_exec = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
        result["average_executed_batch"] = d_count / d_exec if d_exec else float("nan")
        key = f"{kind}/{protocol}/c{concurrency}"
        runs.setdefault(key, []).append(result)
        print(f"{key:16s} {result['requests_per_s']:7.1f} req/s p50 {result['p50_ms']:6.1f} ms "
              f"p99 {result['p99_ms']:6.1f} ms errors {result['errors']} "
              f"avg batch {result['average_executed_batch']:.2f}", flush=True)
    for kind in a.models:  # bare in-process onnxruntime, batch 1, same window
        session = ort.InferenceSession(str(version_dir(MODELS[kind]) / "model.onnx"), providers=["CPUExecutionProvider"])
        bare[kind].append(rate(lambda: session.run(None, {"images": images[:1]}), 1, 2.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--triton-venv", type=Path,
                    default=Path(os.environ.get("OSR_TRITON_VENV", Path.home() / ".cache" / "osr" / "triton-venv")))
    ap.add_argument("--protocols", nargs="+", default=["http", "grpc"])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--seconds", type=float, default=4.0, help="load per configuration and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-pause", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "perf-lite0" / "triton.json")
    a = ap.parse_args()

    images = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in cifar_jpegs(64)])
    configs = [(m, p, c) for m in a.models for p in a.protocols for c in a.concurrency]
    runs: dict[str, list[dict]] = {}
    windows = []
    bare: dict[str, list[float]] = {kind: [] for kind in a.models}
    with tempfile.TemporaryDirectory() as tmp:
        process, urls = start_triton(a.triton_venv, Path(tmp) / "tritonserver.log")
        try:
            for r in range(a.rounds):
                waited = wait_until_idle()
                with quiet_machine(not a.no_pause) as window:
                    run_round(a, r, configs, urls, images, runs, bare)
                windows.append({"round": r + 1, "waited_for_idle_s": waited, **window})
        finally:
            stop(process)
    bare = {kind: summary(v) for kind, v in bare.items()}
    results = {key: {"requests_per_s": summary([r["requests_per_s"] for r in v]),
                     "p50_ms": summary([r["p50_ms"] for r in v]), "p99_ms": summary([r["p99_ms"] for r in v]),
                     "average_executed_batch": summary([r["average_executed_batch"] for r in v]),
                     "errors": sum(r["errors"] for r in v), "requests": sum(r["requests"] for r in v),
                     "first_errors": [e for r in v for e in r["first_errors"]][:3],
                     "ratio_to_bare_onnxruntime_b1": summary([r["requests_per_s"] for r in v])["median"]
                     / bare[key.split("/")[0]]["median"]}
               for key, v in runs.items()}
    save("perf_triton", {"seconds_per_config": a.seconds, "results": results, "windows": windows,
                         "bare_onnxruntime_single_image_per_s": bare}, a.out)


if __name__ == "__main__":
    main()
