"""The HTTP, auth and model-loading findings of issue 10, replayed against a real osr-serve process:
what each attack gets back, how long it takes, and what it costs the server (growth of its peak
resident memory during the attack, measured from /proc/PID/status VmHWM after resetting it
through /proc/PID/clear_refs; file descriptors). Run it on this checkout, and on an older one with --pythonpath to
see the same attacks before the fixes (docs/security.md has both tables).

    python bench/hardening_attacks.py                                   # this checkout
    python bench/hardening_attacks.py --pythonpath /tmp/old --label before   # another osr tree

Each server is a fresh process on 127.0.0.1 serving the bundled model (or --repository), with
the header and body deadlines shortened to 2 s through OSR_* variables (an older osr ignores
them) so that waiting for them is short.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from perf_common import ROOT, free_port, save

DEADLINE_S = 2.0
WAIT_S = 8.0  # how long a client waits before calling the request "never answered"


def status_of(read: callable) -> str:
    try:
        return str(read())
    except (TimeoutError, socket.timeout):
        return f"no answer in {WAIT_S:g} s"
    except (ConnectionError, OSError) as exc:
        return f"connection error ({type(exc).__name__})"


def vm(pid: int, field: str) -> float:
    """VmRSS / VmHWM of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def server(args: argparse.Namespace, extra: list[str] = (), repository: Path | None = None,
           env_extra: dict | None = None) -> Iterator[tuple[subprocess.Popen, int]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSR_")}
    env.update({"OSR_HEADER_TIMEOUT_S": str(DEADLINE_S), "OSR_BODY_TIMEOUT_S": str(DEADLINE_S)}, **(env_extra or {}))
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    command = [sys.executable, "-m", "osr.serve.server", "--model-repository", str(repository or args.repository),
               "--port", str(port), "--log-level", "error", "--threads", "1", *extra]
    if repository is None and args.model:
        command += ["--model", args.model]
    process = subprocess.Popen(command, env=env, cwd=tempfile.gettempdir(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        yield process, port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_ready(process: subprocess.Popen, port: int, timeout_s: float = 90) -> str:
    """'ready', or what happened instead (exited with status N / never ready)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited {process.returncode}: {process.stdout.read().strip().splitlines()[-1]}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return "ready"
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return f"not ready after {timeout_s:g} s"


def post(port: int, path: str, body: bytes, headers: dict | None = None) -> int:
    return httpx.post(f"http://127.0.0.1:{port}{path}", content=body, headers=headers, timeout=WAIT_S).status_code


def raw(port: int, data: bytes, chunked: bool = False) -> int:
    """Send bytes on a fresh socket and return the status the server answers with."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        with contextlib.suppress(OSError):
            if chunked:
                for start in range(0, len(data), 65536):
                    sock.sendall(data[start:start + 65536])
            else:
                sock.sendall(data)
        answer = sock.recv(4096)
    if not answer:
        raise ConnectionError("closed without an answer")
    return int(answer.split()[1])


def gzip_bomb(mib: int) -> bytes:
    head = b'{"inputs":[{"name":"images","shape":[1,32,32,3],"datatype":"UINT8","data":['
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(head)]
    block = b"0," * (1 << 19)
    parts += [compressor.compress(block) for _ in range(mib)]
    return b"".join(parts) + compressor.compress(b"0]}]}") + compressor.flush()


def infer_path(args: argparse.Namespace) -> str:
    return f"/v2/models/{args.model}/infer"


def request_attacks(args: argparse.Namespace) -> list[dict]:
    rows = []
    infer = infer_path(args)
    size = args.image_size
    zeros = [0] * (size * size * 3)

    def shape_json(batch: int) -> bytes:
        return json.dumps({"inputs": [{"name": "images", "shape": [batch, size, size, 3], "datatype": "UINT8",
                                       "data": zeros}]}).encode()

    with server(args) as (process, port):
        assert wait_ready(process, port) == "ready", process.stdout.read()
        pid = process.pid

        def attack(name: str, run: callable) -> None:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current RSS
            before = vm(pid, "VmHWM")
            start = time.monotonic()
            outcome = status_of(run)
            rows.append({"attack": name, "outcome": outcome, "seconds": round(time.monotonic() - start, 2),
                         "peak_rss_growth_mib": round(vm(pid, "VmHWM") - before, 1)})
            print(rows[-1], flush=True)

        bomb = gzip_bomb(19)
        attack(f"gzip bomb: {len(bomb) / 1024:.0f} KiB inflating to 19 MiB of JSON",
               lambda: post(port, infer, bomb, {"Content-Encoding": "gzip"}))
        biggest = (b'{"inputs":[{"name":"images","shape":[1,%d,%d,3],"datatype":"UINT8","data":[' % (size, size)
                   + b"0," * ((4 << 20) // 2 - 64) + b"0]}]}")
        attack(f"JSON data just under the 4 MiB JSON limit ({len(biggest) / 2**20:.2f} MiB of zeros)",
               lambda: post(port, infer, biggest))
        attack("OIP shape [18014398509481985, S, S, 3] with S*S*3 values", lambda: post(port, infer, shape_json(
            18014398509481985)))
        attack("OIP shape [2**70, S, S, 3]", lambda: post(port, infer, shape_json(2**70)))
        attack("JSON nesting bomb: '[' x 100,000", lambda: post(port, infer, b"[" * 100_000))
        attack("half-sent request header", lambda: raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: "))
        attack("half-sent body (Content-Length 5000, 10 bytes sent)", lambda: raw(
            port, f"POST {infer} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n".encode() + b"{" * 10))
        for megabytes in (1, 30):
            header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (megabytes << 20) + b"\r\n\r\n"
            attack(f"{megabytes} MB request header", lambda header=header: raw(port, header, chunked=True))

        # 300 half-sent headers: descriptors the server holds after twice the deadline
        sockets = []
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            sockets.append(sock)
        time.sleep(0.5)
        held_at_start = len(os.listdir(f"/proc/{pid}/fd"))
        time.sleep(2 * DEADLINE_S + 1)
        held_later = len(os.listdir(f"/proc/{pid}/fd"))
        for sock in sockets:
            sock.close()
        rows.append({"attack": "300 half-sent headers", "outcome": f"{held_at_start} descriptors open at 0.5 s, "
                     f"{held_later} at {2 * DEADLINE_S + 1.5:g} s", "seconds": None, "peak_rss_growth_mib": None})
        print(rows[-1], flush=True)
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=WAIT_S).status_code
        rows.append({"attack": "then /readyz", "outcome": str(ready), "seconds": None, "peak_rss_growth_mib": None})
    return rows


def shutdown_attack(args: argparse.Namespace) -> list[dict]:
    """A request still running when the grace period ends, then the exit status."""
    batch = np.zeros((args.shutdown_batch, args.image_size, args.image_size, 3), np.uint8)
    header = json.dumps({"inputs": [{"name": "images", "shape": list(batch.shape), "datatype": "UINT8",
                                     "parameters": {"binary_data_size": batch.nbytes}}]}).encode()
    with server(args, ["--graceful-shutdown-s", "0.2"]) as (process, port):
        assert wait_ready(process, port) == "ready", process.stdout.read()
        answers: list[str] = []
        started = time.monotonic()
        client = threading.Thread(target=lambda: answers.append(status_of(lambda: post(
            port, infer_path(args), header + batch.tobytes(), {"Inference-Header-Content-Length": str(len(header))}))))
        client.start()
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        client.join(60)
        code = process.wait(30)
    return [{"attack": f"SIGTERM while a {args.shutdown_batch}-image request runs, 0.2 s grace",
             "outcome": f"request: {answers[0]}; exit status {code}", "seconds": round(time.monotonic() - started, 2),
             "peak_rss_growth_mib": None}]


def broken_model_attacks(args: argparse.Namespace) -> list[dict]:
    """osr-serve on broken copies of the model: does it start, get ready, answer?"""
    rows = []
    source = Path(args.repository) / args.model
    png = (ROOT / "samples").glob("*.jpg")
    image = next(png).read_bytes()
    cases = {
        "manifest with one class fewer than the logits": lambda m: m.update(classes=m["classes"][:-1]),
        "threshold NaN in the manifest": lambda m: m["threshold"].update(value=float("nan")),
        "manifest version 7 in folder 1": lambda m: m.update(version=7),
        "model_file pointing outside the repository": lambda m: m.update(model_file="../../../outside.onnx"),
    }
    for name, edit in cases.items():
        with tempfile.TemporaryDirectory() as temp:
            repository = Path(temp) / "repo"
            shutil.copytree(source, repository / args.model, symlinks=False)
            shutil.copy(source / "1" / "model.onnx", Path(temp) / "outside.onnx")
            path = repository / args.model / "1" / "manifest.json"
            manifest = json.loads(path.read_text())
            edit(manifest)
            path.write_text(json.dumps(manifest))
            with server(args, repository=repository) as (process, port):
                state = wait_ready(process, port, timeout_s=45)
                if state == "ready":
                    state += "; /v1/classify: " + status_of(lambda: httpx.post(
                        f"http://127.0.0.1:{port}/v1/classify", files=[("files", ("a.jpg", image))],
                        timeout=WAIT_S).status_code)
        rows.append({"attack": name, "outcome": state, "seconds": None, "peak_rss_growth_mib": None})
        print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as temp:
        key_file = Path(temp) / "key"
        key_file.write_text("")
        with server(args, ["--api-key-file", str(key_file)]) as (process, port):
            state = wait_ready(process, port, timeout_s=45)
            if state == "ready":
                state += "; /v2/models without a key: " + status_of(lambda: httpx.get(
                    f"http://127.0.0.1:{port}/v2/models/{args.model}", timeout=WAIT_S).status_code)
        rows.append({"attack": "empty --api-key-file", "outcome": state, "seconds": None, "peak_rss_growth_mib": None})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pythonpath", help="run the osr found here (PYTHONPATH) instead of this checkout's")
    parser.add_argument("--label", default="after", help="name of this run in the results")
    parser.add_argument("--repository", default=str(ROOT / "model_repository"))
    parser.add_argument("--model", default="cifar10-ad")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--shutdown-batch", type=int, default=3000)
    args = parser.parse_args()
    rows = request_attacks(args) + shutdown_attack(args) + broken_model_attacks(args)
    print(json.dumps(rows, indent=1))
    save(f"hardening_attacks_{args.label}", {"label": args.label, "pythonpath": args.pythonpath,
                                             "deadlines_s": DEADLINE_S, "rows": rows})


if __name__ == "__main__":
    main()
