"""What one client can make osr-serve spend at default settings (issue 20), measured against a
real ``osr-serve`` (bundled model, every setting at its default) on 127.0.0.1:

1. bursts of 32 and 64 concurrent uploads of a maximal legal PNG (6324 x 6324 RGBA, the largest
   square within the default 40,000,000 pixels; flat, so 169 KB on the wire): the server's peak
   RSS during the burst (sampled every 20 ms from /proc), its RSS 5 s after, every status, and
   the 5xx that are not a documented 503 (with Retry-After; there must be none);
2. the latency of single-image /v1 requests alone, then while maximal /v2 requests run back to
   back (``max_infer_images`` images each), and what the issue's 6,825-image gzip request gets;
3. one /v1 request with 64 copies of the maximal PNG: its server time (bounded by the request
   deadline) and the server's CPU seconds during and after it (the dropped work never runs);
4. in-process: decode time of flat 40 MP progressive JPEGs by scan count, and which are refused.

    .venv/bin/python bench/hardening_load.py                 # bench/results/hardening_load.json

Every request has a client timeout, and the whole run stops after --timeout-s (default 1200).
Numbers from a shared machine move with its load: the result records the load average and
whether a training job was running.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perf_common import ROOT, free_port, save  # noqa: E402

from osr.images import DEFAULT_MAX_PIXELS, DecodeError, decode_to_pil  # noqa: E402
from osr.serve.settings import Settings  # noqa: E402

SAMPLE = ROOT / "samples" / "cat.jpg"
CLIENT_TIMEOUT_S = 180.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def maximal_png() -> bytes:
    side = math.isqrt(DEFAULT_MAX_PIXELS)
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (90, 120, 200, 128)).save(buffer, "PNG")
    return buffer.getvalue()


class RssSampler:
    """The RSS of a process, every ``interval_s``, in a thread; ``peak`` since the last reset."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

    def reset(self) -> None:
        self.peak = self.rss()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.rss())
            except (OSError, StopIteration):
                return
            time.sleep(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def mib(value: float) -> float:
    return round(value / (1 << 20), 1)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


def latencies(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": round(percentile(values, 50) * 1000, 1),
            "p99_ms": round(percentile(values, 99) * 1000, 1), "max_ms": round(max(values) * 1000, 1)}


def classify_answer(response: httpx.Response) -> str:
    """'ok', 'documented_503' (decode budget or deadline, with Retry-After), '4xx', or 'other_5xx'."""
    if response.status_code < 400:
        return "ok"
    if response.status_code < 500:
        return "4xx"
    text = response.text
    if (response.status_code == 503 and response.headers.get("retry-after")
            and ("memory budget" in text or "deadline" in text)):
        return "documented_503"
    return "other_5xx"


async def post_files(client: httpx.AsyncClient, url: str, files: list[bytes]) -> dict:
    start = time.perf_counter()
    response = await client.post(f"{url}/v1/classify", files=[("files", (f"f{i}.png", data, "image/png"))
                                                               for i, data in enumerate(files)])
    return {"status": response.status_code, "seconds": time.perf_counter() - start,
            "answer": classify_answer(response), "retry_after": response.headers.get("retry-after"),
            "message": response.text[:160] if response.status_code >= 400 else ""}


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


async def burst(url: str, sampler: RssSampler, image: bytes, concurrency: int) -> dict:
    sampler.reset()
    before = sampler.rss()
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(post_files(client, url, [image]) for _ in range(concurrency)))
        wall = time.perf_counter() - start
        peak = sampler.peak
        await asyncio.sleep(5)
        rss_5s_after = sampler.rss()
        # decodes admitted for requests that ran out of time finish on their threads: wait for them
        drained = time.perf_counter()
        while time.perf_counter() - drained < 120:
            metrics_text = (await client.get(f"{url}/metrics")).text
            if not metric(metrics_text, "osr_decode_reserved_bytes") and not metric(metrics_text, "osr_decode_waiting"):
                break
            await asyncio.sleep(0.5)
        drained = time.perf_counter() - drained
        await asyncio.sleep(2)
        peak = max(peak, sampler.peak)
    answers = [r["answer"] for r in results]
    ok = [r["seconds"] for r in results if r["answer"] == "ok"]
    refused = [r["seconds"] for r in results if r["answer"] == "documented_503"]
    return {
        "concurrent_uploads": concurrency, "wall_s": round(wall, 2),
        "rss_before_mib": mib(before), "rss_peak_mib": mib(peak), "rss_5s_after_mib": mib(rss_5s_after),
        "decodes_drained_s_after_that": round(drained, 1), "rss_after_drained_mib": mib(sampler.rss()),
        "statuses": {str(s): [r["status"] for r in results].count(s) for s in sorted({r["status"] for r in results})},
        "answers": {a: answers.count(a) for a in sorted(set(answers))},
        "other_5xx": answers.count("other_5xx"),
        "ok_latency": latencies(ok) if ok else None,
        "refused_503_latency": latencies(refused) if refused else None,
        "retry_after": sorted({r["retry_after"] for r in results if r["retry_after"]}),
        "refusal_messages": sorted({r["message"][:110] for r in results if r["answer"] == "documented_503"}),
        "osr_overloaded_total": {reason: metric(metrics_text, f'osr_overloaded_total{{reason="{reason}"}}')
                                 for reason in ("decode_budget", "deadline")},
    }


def oip_binary_request(count: int, image_size: int = 32, black: bool = False) -> tuple[bytes, dict]:
    shape = (count, image_size, image_size, 3)
    tensor = np.zeros(shape, np.uint8) if black else np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    header = json.dumps({"inputs": [{"name": "images", "shape": list(tensor.shape), "datatype": "UINT8",
                                     "parameters": {"binary_data_size": tensor.nbytes}}]}).encode()
    return header + tensor.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                       "Content-Type": "application/octet-stream"}


async def fairness(url: str, model: str, max_images: int, rounds: int) -> dict:
    sample = SAMPLE.read_bytes()
    body, headers = oip_binary_request(max_images)
    infer = f"{url}/v2/models/{model}/infer"

    async def single(client: httpx.AsyncClient) -> float:
        start = time.perf_counter()
        response = await client.post(f"{url}/v1/classify", files=[("files", ("cat.jpg", sample, "image/jpeg"))])
        assert response.status_code == 200, response.text
        return time.perf_counter() - start

    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as client:
        for _ in range(5):
            await single(client)  # warm
        alone = [await single(client) for _ in range(rounds)]
        stop = asyncio.Event()
        big: list[tuple[int, float]] = []

        async def maximal_oip_requests() -> None:
            async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as other:
                while not stop.is_set():
                    start = time.perf_counter()
                    response = await other.post(infer, content=body, headers=headers)
                    big.append((response.status_code, time.perf_counter() - start))

        runner = asyncio.create_task(maximal_oip_requests())
        await asyncio.sleep(0.5)
        during = [await single(client) for _ in range(rounds)]
        stop.set()
        await runner
        # the request: 6,825 images, 20 MiB inflated from about 20 KB of gzip
        bomb_body, bomb_headers = oip_binary_request(6825, black=True)
        bomb_headers["Content-Encoding"] = "gzip"
        packed = gzip.compress(bomb_body)
        start = time.perf_counter()
        response = await client.post(infer, content=packed, headers=bomb_headers)
        bomb = {"images": 6825, "gzip_bytes": len(packed), "status": response.status_code,
                "seconds": round(time.perf_counter() - start, 3), "message": response.text[:200]}
    return {
        "v1_single_image_alone": latencies(alone),
        "v1_single_image_while_maximal_v2_runs": latencies(during),
        "maximal_v2": {"images": max_images, "requests": len(big),
                       "statuses": sorted({status for status, _ in big}),
                       "latency": latencies([seconds for _, seconds in big]) if big else None},
        "issue_6825_image_gzip_request": bomb,
    }


async def bomb_request(url: str, pid: int, image: bytes, copies: int) -> dict:
    async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT_S) as client:
        cpu_before = cpu_seconds(pid)
        result = await post_files(client, url, [image] * copies)
        cpu_at_answer = cpu_seconds(pid)
        await asyncio.sleep(10)
        cpu_after = cpu_seconds(pid)
    return {"copies": copies, "body_bytes": len(image) * copies, "status": result["status"],
            "answer": result["answer"], "server_time_s": round(result["seconds"], 2),
            "message": result["message"], "server_cpu_s_until_answer": round(cpu_at_answer - cpu_before, 2),
            "server_cpu_s_in_10s_after_answer": round(cpu_after - cpu_at_answer, 2)}


def scan_cost(side: int) -> list[dict]:
    """Decode time of flat progressive JPEGs of side x side with more and more scans (in process)."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 200)).save(buffer, "JPEG", quality=90, progressive=True)
    data = buffer.getvalue()
    last_scan, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    rows = []
    for repeats in (0, 6, 7, 90):
        bomb = data[:end] + data[last_scan:end] * repeats + data[end:]
        scans = bomb.count(b"\xff\xda")
        start = time.perf_counter()
        try:
            decode_to_pil(bomb)
            outcome = "decoded"
        except DecodeError as exc:
            outcome = f"refused ({exc.reason})"
        seconds = time.perf_counter() - start
        raw = Image.open(io.BytesIO(bomb))
        start = time.perf_counter()
        raw.load()  # what the decode costs without the limit
        rows.append({"side": side, "scans": scans, "bytes": len(bomb), "osr": outcome, "osr_s": round(seconds, 3),
                     "pillow_decode_s": round(time.perf_counter() - start, 3)})
        raw.close()
    return rows


def start_server(port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSR_")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.Popen([sys.executable, "-m", "osr.serve.server", "--port", str(port)], env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("osr-serve exited before it was ready")
        try:
            response = httpx.get(f"{url}/readyz", timeout=2)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("osr-serve was not ready in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=200, help="single-image /v1 requests per latency series")
    parser.add_argument("--bursts", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--bomb-copies", type=int, default=64)
    parser.add_argument("--timeout-s", type=float, default=1200, help="stop the whole run after this")
    parser.add_argument("--skip-scan-cost", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("the run took too long")))
    signal.alarm(int(args.timeout_s))

    defaults = Settings.model_fields
    limits = {name: defaults[name].default for name in (
        "max_body_bytes", "max_pixels", "max_files", "max_infer_images", "request_timeout_s",
        "decode_memory_bytes", "decode_wait_s", "monitor_images_per_request", "max_batch")}
    image = maximal_png()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(f"/tmp/hardening_load_server_{port}.log")
    process = start_server(port, log)
    result: dict = {"settings": "osr-serve defaults (bundled model)", "limits": limits,
                    "loadavg_at_start": os.getloadavg(),
                    "maximal_png": {"pixels": Image.open(io.BytesIO(image)).size, "mode": "RGBA", "bytes": len(image)}}
    sampler = None
    try:
        ready = wait_ready(url, process)
        result["model"] = ready
        sampler = RssSampler(process.pid)
        time.sleep(1)
        result["rss_idle_mib"] = mib(sampler.rss())
        for concurrency in args.bursts:
            print(f"burst of {concurrency} uploads ...", flush=True)
            result[f"burst_{concurrency}"] = asyncio.run(burst(url, sampler, image, concurrency))
            print(json.dumps(result[f"burst_{concurrency}"], indent=1), flush=True)
        print("fairness ...", flush=True)
        result["fairness"] = asyncio.run(fairness(url, ready["model"], limits["max_infer_images"], args.rounds))
        print(json.dumps(result["fairness"], indent=1), flush=True)
        print(f"one request of {args.bomb_copies} maximal PNGs ...", flush=True)
        result["bomb"] = asyncio.run(bomb_request(url, process.pid, image, args.bomb_copies))
        print(json.dumps(result["bomb"], indent=1), flush=True)
        result["rss_end_mib"] = mib(sampler.rss())
        result["server_alive_at_end"] = process.poll() is None
        result["server_peak_rss_mib_vmhwm"] = mib(next(
            int(line.split()[1]) * 1024 for line in Path(f"/proc/{process.pid}/status").read_text().splitlines()
            if line.startswith("VmHWM:")))
    finally:
        if sampler is not None:
            sampler.stop()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
    result["server_exit_status"] = process.returncode
    if not args.skip_scan_cost:
        print("scan cost ...", flush=True)
        result["jpeg_scan_cost"] = scan_cost(math.isqrt(DEFAULT_MAX_PIXELS))
        print(json.dumps(result["jpeg_scan_cost"], indent=1), flush=True)
    other = sum(result[f"burst_{c}"]["other_5xx"] for c in args.bursts) + (result["bomb"]["answer"] == "other_5xx")
    result["other_5xx_total"] = other
    save("hardening_load", result, args.out)
    print(f"5xx other than documented 503s: {other}; median of single-image p99 while v2 runs: "
          f"{result['fairness']['v1_single_image_while_maximal_v2_runs']['p99_ms']} ms", flush=True)


if __name__ == "__main__":
    main()
