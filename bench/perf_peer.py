"""osr-serve against the peer (bench/peer_service.py, the ~30-line FastAPI + onnxruntime service a
user would write instead) and a bare batched onnxruntime loop, in one run, for the bundled default
model and its int8 variant.

    python bench/perf_peer.py --rounds 2            # 1, 8 and 32 connections, fp32 and int8

Each round is one quiet window (the background training paused with SIGSTOP, resumed after;
perf_common.quiet_machine). In it, for each model (order alternating between rounds):
osr-serve (--workers 2, every other setting at its default) and the peer (uvicorn --workers 1
and 2; the peer's ratio uses its better one at each connection count) are started in turn and
loaded with wrk (bench/wrk_classify.lua, one prebuilt multipart body:
one real CIFAR-10 test JPEG per request, 1 s warm-up, then --duration s) at each connection
count; then, in this process, a bare single-image loop (decode + resize + run, onnxruntime's
default threads) and a bare batched loop (32 decoded images per run). wrk shares the 2 cores
with the servers. The resident memory of every server process is read after its loads.

Writes bench/results/perf-lite0/peer.json (or --out).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from perf_common import (MODELS, REPOSITORY, ROOT, cifar_jpegs, free_port, quiet_machine, save, summary,
                         version_dir, wait_until_idle)

RESULTS_DIR = ROOT / "bench" / "results" / "perf-lite0"
WRK_SCRIPT = ROOT / "bench" / "wrk_classify.lua"


def process_tree_rss(pid: int) -> list[dict]:
    """Resident (RSS) and proportional (PSS) memory in MB of a process and all its descendants, one row each."""
    rows, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        try:  # proportional set size: shared pages (libraries, a forked parent's) divided among their users
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
            pss = next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
        except OSError:
            pss = 0
        rows.append({"pid": p, "rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1), "cmd": cmd[:120]})
        children = subprocess.run(["pgrep", "-P", str(p)], capture_output=True, text=True).stdout.split()
        todo += [int(c) for c in children]
    return rows


def multipart(image: bytes, field: str) -> tuple[bytes, str]:
    boundary = "osr-bench-" + os.urandom(8).hex()
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="x.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, boundary


def wrk(url: str, body: bytes, boundary: str, seconds: float, connections: int) -> dict:
    """wrk, one thread, ``connections`` connections, for ``seconds``: counts and percentiles."""
    with tempfile.NamedTemporaryFile(suffix=".body") as f:
        f.write(body)
        f.flush()
        env = {**os.environ, "OSR_WRK_BODY": f.name, "OSR_WRK_BOUNDARY": boundary}
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(round(seconds))}s", "--timeout", "30s",
                              "-s", str(WRK_SCRIPT), url], env=env, capture_output=True, text=True, check=True).stdout
    m = re.search(r"OSR_WRK_JSON (\{.*\})", out)
    if m is None:
        raise RuntimeError(f"no result line from wrk:\n{out}")
    w = json.loads(m.group(1))
    errors = sum(w[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    wall = w["duration_us"] / 1e6
    return {"requests": w["requests"], "errors": errors, "requests_per_s": w["requests"] / wall,
            "p50_ms": w["p50_us"] / 1e3, "p90_ms": w["p90_us"] / 1e3, "p99_ms": w["p99_us"] / 1e3,
            "mean_ms": w["mean_us"] / 1e3}


class Server:
    """A server process on 127.0.0.1 (its own session, so the whole tree stops on SIGTERM)."""

    def __init__(self, cmd: list[str], ready_url: str, env: dict | None = None, log: Path | None = None):
        self.log = open(log or os.devnull, "wb")
        self.process = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, **(env or {})}, cwd=ROOT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{cmd} exited with {self.process.returncode}")
            try:
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{cmd} not ready in 90 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()


def start_osr(model: str, workers: int, extra: list[str] = (), repository: Path = REPOSITORY) -> tuple[Server, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "osr.serve.server", "--model-repository", str(repository), "--model", model,
           "--port", str(port), "--workers", str(workers), "--log-level", "warning", *extra]
    return Server(cmd, f"http://127.0.0.1:{port}/readyz"), f"http://127.0.0.1:{port}/v1/classify"


def start_peer(model: str, workers: int, repository: Path = REPOSITORY) -> tuple[Server, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"), "peer_service:app",
           "--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    env = {"OSR_PEER_MODEL": str(version_dir(model, repository))}
    return Server(cmd, f"http://127.0.0.1:{port}/docs", env=env), f"http://127.0.0.1:{port}/classify"


def check_answer(kind: str, url: str, body: bytes, boundary: str, in_a_row: int = 20, wait_s: float = 90) -> str:
    """Requests before the load until ``in_a_row`` answers in a row are 200 with a decision (every
    worker has loaded its model: one ready worker makes /readyz 200); the label given."""
    deadline, good, r = time.monotonic() + wait_s, 0, None
    while good < in_a_row:
        r = httpx.post(url, content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                       timeout=30)
        good = good + 1 if r.status_code == 200 else 0
        if good == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind}: {r.status_code} {r.text[:300]}")
            time.sleep(0.2)
    data = r.json()
    return data["results"][0]["class_name"] if kind == "osr" else data["label"]


def load_service(kind: str, model: str, image: bytes, connections: list[int], seconds: float,
                 workers: int, extra: list[str] = ()) -> dict:
    """kind: "osr" or "peer"."""
    """Start one service, load it at each connection count (1 s warm-up first), read its memory, stop it."""
    server, url = start_osr(model, workers, list(extra)) if kind == "osr" else start_peer(model, workers)
    try:
        body, boundary = multipart(image, "files" if kind == "osr" else "file")
        label = check_answer(kind, url, body, boundary)
        # every worker warmed up (uvicorn hands connections to whichever worker accepts first)
        wrk(url, body, boundary, 1, max(connections))
        runs = {}
        for c in connections:
            runs[f"c{c}"] = wrk(url, body, boundary, seconds, c)
            print(f"  {kind:5s} {model:20s} c{c:<3d} {runs[f'c{c}']['requests_per_s']:7.1f} req/s "
                  f"p50 {runs[f'c{c}']['p50_ms']:6.1f} ms p99 {runs[f'c{c}']['p99_ms']:6.1f} ms "
                  f"errors {runs[f'c{c}']['errors']}", flush=True)
        memory = process_tree_rss(server.process.pid)
    finally:
        server.stop()
    return {"loads": runs, "label": label, "memory": memory}


def decode(data: bytes, size: int) -> np.ndarray:
    """What the peer does to an upload (the test images are already size x size: no real resize)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BILINEAR))


def bare_loops(model: str, jpegs: list[bytes], seconds: float, batch: int = 32) -> dict:
    """Images/s of decode + onnxruntime in this process: one image per run, and ``batch`` per run."""
    import onnxruntime as ort

    folder = version_dir(model)
    size = json.loads((folder / "manifest.json").read_text())["image_size"]
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    out = {}
    for name, per_run in (("bare_single", 1), ("bare_batched", batch)):
        session.run(None, {"images": np.stack([decode(j, size) for j in jpegs[:per_run]])})
        done, i, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            chunk = [jpegs[(i + k) % len(jpegs)] for k in range(per_run)]
            session.run(None, {"images": np.stack([decode(j, size) for j in chunk])})
            done, i = done + per_run, i + per_run
        out[name] = done / (time.perf_counter() - t0)
        print(f"  {name:12s} {model:20s} {out[name]:7.1f} img/s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--workers", type=int, default=2, help="uvicorn workers of osr-serve")
    ap.add_argument("--peer-workers", type=int, nargs="+", default=[1, 2], help="uvicorn workers of the peer")
    ap.add_argument("--duration", type=float, default=5, help="seconds of wrk load per connection count")
    ap.add_argument("--bare-seconds", type=float, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="quiet windows, one per round")
    ap.add_argument("--no-pause", action="store_true", help="leave background training running")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "peer.json")
    a = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")

    jpegs = cifar_jpegs(256)
    image = jpegs[0]
    rounds = []
    for r in range(a.rounds):
        waited = wait_until_idle()
        order = a.models if r % 2 == 0 else a.models[::-1]
        result: dict = {"waited_for_idle_s": waited, "order": order, "models": {}}
        with quiet_machine(not a.no_pause) as window:
            for kind in order:
                model = MODELS[kind]
                services = [("osr", a.workers)] + [("peer", w) for w in a.peer_workers]
                entry = {}
                for service, workers in (services if r % 2 == 0 else services[::-1]):
                    key = "osr" if service == "osr" else f"peer_w{workers}"
                    entry[key] = load_service(service, model, image, a.connections, a.duration, workers)
                entry["peer"] = {"loads": {}}  # the better peer at each connection count
                for c in a.connections:
                    best = max(a.peer_workers, key=lambda w: entry[f"peer_w{w}"]["loads"][f"c{c}"]["requests_per_s"])
                    entry["peer"]["loads"][f"c{c}"] = {**entry[f"peer_w{best}"]["loads"][f"c{c}"], "workers": best}
                entry.update(bare_loops(model, jpegs, a.bare_seconds))
                result["models"][kind] = entry
        result["window"] = window
        print(f"round {r + 1}: window {window['seconds']} s, other CPU use: "
              f"{[(o['cmd'][:60], o['cpu_s']) for o in window['other_cpu_use']]}", flush=True)
        rounds.append(result)

    # ratios per round (the services compared inside one window), then their median and spread
    ratios: dict[str, list[float]] = {}

    def add(key: str, numerator: float, denominator: float) -> None:
        ratios.setdefault(key, []).append(numerator / denominator if denominator else float("nan"))

    for res in rounds:
        for kind, entry in res["models"].items():
            for c in a.connections:
                osr, peer = entry["osr"]["loads"][f"c{c}"], entry["peer"]["loads"][f"c{c}"]
                add(f"{kind}/c{c}/osr_over_peer", osr["requests_per_s"], peer["requests_per_s"])
                add(f"{kind}/c{c}/osr_over_bare_batched", osr["requests_per_s"], entry["bare_batched"])
                add(f"{kind}/c{c}/osr_over_bare_single", osr["requests_per_s"], entry["bare_single"])
        if {"fp32", "int8"} <= set(res["models"]):
            for c in a.connections:
                for s in ("osr", "peer"):
                    add(f"int8_over_fp32/c{c}/{s}", res["models"]["int8"][s]["loads"][f"c{c}"]["requests_per_s"],
                        res["models"]["fp32"][s]["loads"][f"c{c}"]["requests_per_s"])
            for b in ("bare_single", "bare_batched"):
                add(f"int8_over_fp32/{b}", res["models"]["int8"][b], res["models"]["fp32"][b])
    save("peer", {"connections": a.connections, "workers": a.workers, "peer_workers": a.peer_workers,
                  "duration_s": a.duration,
                  "image": "one CIFAR-10 test JPEG (32 x 32, from the shared JPEG pack)",
                  "rounds": rounds, "ratios": {k: {"per_round": v, **summary(v)} for k, v in ratios.items()}}, a.out)
    for k, v in ratios.items():
        print(f"{k:40s} " + " ".join(f"{x:.2f}" for x in v))


if __name__ == "__main__":
    main()
