"""A bounded load run against osr-serve on 127.0.0.1, beside the bare predictor's throughput.

    python bench/load_serve.py --workers 2 --requests 2000 --concurrency 8 [--images-per-request 1]

Starts osr-serve (bundled model unless --model-repository), waits for /readyz, records the
resident memory of the server's processes, sends a fixed number of POST /v1/classify requests
from --concurrency threads, records it again, and stops the server. Prints and writes JSON:
requests/s, images/s, p50/p90/p99 latency, errors, memory before/after, and the bare predictor's
single-image throughput on the same image in this process for the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-repository", default=None)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads per worker")
    ap.add_argument("--requests", type=int, default=1000)
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
        files = [("files", (f"{i}.jpg", image, "image/jpeg")) for i in range(a.images_per_request)]
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        counter = iter(range(a.requests))

        def client() -> None:
            with httpx.Client(timeout=30) as c:
                while True:
                    with lock:
                        if next(counter, None) is None:
                            return
                    t0 = time.perf_counter()
                    try:
                        r = c.post(f"{base}/v1/classify", files=files)
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
        threads = [threading.Thread(target=client) for _ in range(a.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        rss_after = tree_rss_mb(server.pid)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)

    lat = sorted(latencies)
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3  # noqa: E731
    bare = bare_predictor_rate(a.model_repository, image, 300, a.threads)
    result = {
        "args": {k: str(v) for k, v in vars(a).items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "requests": len(lat), "errors": len(errors), "first_errors": errors[:3], "wall_s": wall,
        "requests_per_s": len(lat) / wall, "images_per_s": len(lat) * a.images_per_request / wall,
        "latency_ms": {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "mean": statistics.mean(lat) * 1e3},
        "rss_mb": {"before": round(rss_before, 1), "after": round(rss_after, 1)},
        "bare_predictor_single_image_per_s": bare,
        "ratio_to_bare_predictor": (len(lat) * a.images_per_request / wall) / bare,
    }
    print(json.dumps(result, indent=2))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
