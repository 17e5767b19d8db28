"""A bounded load run against osr-serve on 127.0.0.1, beside the bare predictor's throughput.

    python bench/load_serve.py --workers 2 --requests 2000 --concurrency 8 [--images-per-request 1]
    python bench/load_serve.py --workers 2 --client wrk --duration 10 --concurrency 8

Starts osr-serve (bundled model unless --model-repository), waits for /readyz, records the
resident memory of the server's processes, sends POST /v1/classify requests from --concurrency
connections, records it again, and stops the server. The client is either Python threads with
httpx (a fixed number of requests, every response body checked) or wrk (apt install wrk; a fixed
duration, status codes checked, one response body checked first): wrk is written in C and takes
a few per cent of a core where the Python client takes most of one, which matters when client
and server share a 2-core machine. Prints and writes JSON:
requests/s, images/s, p50/p90/p99 latency, errors, memory before/after, and the bare predictor's
single-image throughput on the same image in this process for the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from perf_common import free_port, latency_ms

ROOT = Path(__file__).resolve().parents[1]


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn workers), from /proc."""
    pids, total = [pid], 0
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    pids += [int(p) for p in out.split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def bare_predictor_rate(repository: str | None, image: bytes, n: int, threads: int | None) -> float:
    from osr.serve.predictor import Predictor

    with Predictor.from_repository(repository, threads=threads) as p:
        p.classify_bytes([("x.jpg", image)])
        t0 = time.perf_counter()
        for _ in range(n):
            p.classify_bytes([("x.jpg", image)])
        return n / (time.perf_counter() - t0)


def python_load(url: str, files: list, requests: int, concurrency: int) -> dict:
    """A fixed number of requests from ``concurrency`` httpx threads; every body is checked."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        with httpx.Client(timeout=30) as c:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                t0 = time.perf_counter()
                try:
                    r = c.post(url, files=files)
                    ok = r.status_code == 200 and all(x["status"] == "ok" for x in r.json()["results"])
                    err = None if ok else f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as e:
                    err = repr(e)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    if err:
                        errors.append(err)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"requests": len(latencies), "errors": len(errors), "first_errors": errors[:3], "wall_s": wall,
            "latency_ms": latency_ms(latencies)}


def multipart_body(image: bytes, count: int, boundary: str) -> bytes:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{i}.jpg"\r\n'
             f"Content-Type: image/jpeg\r\n\r\n".encode() + image + b"\r\n" for i in range(count)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def wrk_load(url: str, image: bytes, images_per_request: int, duration: int, concurrency: int) -> dict:
    """wrk for ``duration`` seconds with ``concurrency`` connections on one thread."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("--client wrk: wrk is not installed (apt install wrk), or use --client python")
    boundary = "osr-bench-" + os.urandom(8).hex()
    body = multipart_body(image, images_per_request, boundary)
    check = httpx.post(url, content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                       timeout=30)
    if check.status_code != 200 or not all(x["status"] == "ok" for x in check.json()["results"]):
        raise SystemExit(f"the wrk request body is not accepted: {check.status_code} {check.text[:300]}")
    with tempfile.NamedTemporaryFile(suffix=".body") as f:
        f.write(body)
        f.flush()
        env = {**os.environ, "OSR_WRK_BODY": f.name, "OSR_WRK_BOUNDARY": boundary}
        out = subprocess.run([wrk, "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "30s",
                              "-s", str(ROOT / "bench" / "wrk_classify.lua"), url],
                             env=env, capture_output=True, text=True, check=True).stdout
    m = re.search(r"OSR_WRK_JSON (\{.*\})", out)
    if m is None:
        raise SystemExit(f"no result line from wrk:\n{out}")
    w = json.loads(m.group(1))
    errors = sum(w[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    return {"requests": w["requests"], "errors": errors,
            "first_errors": [f"{k}: {w[k]}" for k in w if k.endswith(("errors", "timeouts")) and w[k]],
            "wall_s": w["duration_us"] / 1e6,
            "latency_ms": {"p50": w["p50_us"] / 1e3, "p90": w["p90_us"] / 1e3, "p99": w["p99_us"] / 1e3,
                           "mean": w["mean_us"] / 1e3}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-repository", default=None)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads per worker")
    ap.add_argument("--client", choices=["python", "wrk"], default="python")
    ap.add_argument("--requests", type=int, default=1000, help="requests sent (--client python)")
    ap.add_argument("--duration", type=int, default=8, help="seconds of load (--client wrk)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--images-per-request", type=int, default=1)
    ap.add_argument("--image", type=Path, default=ROOT / "samples" / "airplane.jpg")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more osr-serve flags")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    image = a.image.read_bytes()
    port = free_port()
    cmd = [sys.executable, "-m", "osr.serve.server", "--port", str(port), "--workers", str(a.workers),
           "--log-level", "warning", *(["--model-repository", a.model_repository] if a.model_repository else []),
           *(["--threads", str(a.threads)] if a.threads else []), *a.extra]
    server = subprocess.Popen(cmd, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit("osr-serve did not become ready in 60 s")
        time.sleep(0.5 * a.workers)  # every worker warmed up
        rss_before = tree_rss_mb(server.pid)
        url = f"{base}/v1/classify"
        if a.client == "wrk":
            load = wrk_load(url, image, a.images_per_request, a.duration, a.concurrency)
        else:
            files = [("files", (f"{i}.jpg", image, "image/jpeg")) for i in range(a.images_per_request)]
            load = python_load(url, files, a.requests, a.concurrency)
        rss_after = tree_rss_mb(server.pid)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)

    bare = bare_predictor_rate(a.model_repository, image, 300, a.threads)
    result = {
        "args": {k: str(v) for k, v in vars(a).items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "client": a.client, **load,
        "requests_per_s": load["requests"] / load["wall_s"],
        "images_per_s": load["requests"] * a.images_per_request / load["wall_s"],
        "rss_mb": {"before": round(rss_before, 1), "after": round(rss_after, 1)},
        "bare_predictor_single_image_per_s": bare,
        "ratio_to_bare_predictor": load["requests"] * a.images_per_request / load["wall_s"] / bare,
    }
    print(json.dumps(result, indent=2))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
