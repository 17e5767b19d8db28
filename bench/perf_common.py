"""Shared pieces of the bench/perf_*.py benchmarks: machine facts, summary statistics,
round-robin timing, real CIFAR-10 JPEGs, result files.

Every benchmark times the layers it compares in the same process run, interleaved, and reports
medians with their spread, so the load of a shared machine hits every layer alike; the ratios
are the numbers to trust, the absolute rates move with the machine.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REPOSITORY = ROOT / "model_repository"
MODELS = {"fp32": "cifar10-ad", "int8": "cifar10-ad-int8"}
SAMPLES = sorted((ROOT / "samples").glob("*.jpg"))
CIFAR_TEST = Path(os.environ.get("OSR_DATA_ROOT", ROOT.parent / "shared" / "datasets")) / "cifar10" / "test.npz"


def single_model_repository(name: str, parent: Path) -> Path:
    """A repository holding only ``name`` (a link to the bundled folder), for tools that serve
    "the only model" of a repository, such as bench/load_serve.py's bare predictor."""
    repository = parent / f"repo-{name}"
    repository.mkdir(parents=True, exist_ok=True)
    link = repository / name
    if not link.exists():
        link.symlink_to(REPOSITORY / name, target_is_directory=True)
    return repository


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (servers started by the benchmarks bind only there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> dict:
    """Where the numbers come from: CPU, cores, load, package versions."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    versions = {}
    for package in ("onnxruntime", "numpy", "pillow", "torch", "fastapi", "uvicorn", "httpx", "tritonclient"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    others = subprocess.run(["pgrep", "-f", "osr.train"], capture_output=True, text=True).stdout.split()
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpus": os.cpu_count(), "loadavg_1_5_15min": os.getloadavg(), "versions": versions,
            "osr_train_running": bool(others), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def summary(values: list[float]) -> dict:
    """Median and spread (min, quartiles, max) of repeated measurements."""
    values = sorted(values)
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "min": values[0], "q1": q[0], "q3": q[2], "max": values[-1],
            "n": len(values)}


def round_robin(cases: dict[str, Callable[[], float]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Call every case once per round, in a rotating order; each call returns one measurement."""
    names = list(cases)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            value = cases[name]()
            if r >= warmup:
                out[name].append(value)
    return out


def latency_ms(seconds: list[float]) -> dict:
    """p50/p90/p99 and mean of request latencies given in seconds, in milliseconds."""
    lat = sorted(seconds)
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3  # noqa: E731
    return {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "mean": statistics.mean(lat) * 1e3}


def rate(fn: Callable[[], object], items: int, min_seconds: float) -> float:
    """Items per second of calling fn repeatedly for at least min_seconds."""
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return calls * items / elapsed


def cifar_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """``count`` real CIFAR-10 test images as their original JPEG bytes (the pack's q75 copies)."""
    from osr.train.data import JpegPack

    pack = JpegPack([CIFAR_TEST])
    picks = np.random.default_rng(seed).choice(len(pack), size=count, replace=False)
    return [pack.raw(i) for i in sorted(picks)]


def write_jpeg_folder(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(cifar_jpegs(count)):
        path = folder / f"{i:05d}.jpg"
        path.write_bytes(data)
        paths.append(path)
    return paths


def save(name: str, result: dict, out: Path | None = None) -> Path:
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), **result}
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def fmt(s: dict, scale: float = 1.0, digits: int = 1) -> str:
    """'median [min..max]' of a summary() dict."""
    return f"{s['median'] * scale:.{digits}f} [{s['min'] * scale:.{digits}f}..{s['max'] * scale:.{digits}f}]"
