"""Shared pieces of the bench/perf_*.py benchmarks: machine facts, summary statistics,
round-robin timing, real CIFAR-10 JPEGs, result files.

Every benchmark times the layers it compares in the same process run, interleaved, and reports
medians with their spread, so the load of a shared machine hits every layer alike; the ratios
are the numbers to trust, the absolute rates move with the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REPOSITORY = ROOT / "model_repository"
MODELS = {"fp32": "cifar10-lite0", "int8": "cifar10-lite0-int8"}  # the bundled default and its int8 variant
OLD_MODELS = {"fp32": "cifar10-ad", "int8": "cifar10-ad-int8"}  # the old default (docs' older tables)
TRAINING_PATTERNS = ("osr-train", "probe_study")  # background jobs paused (SIGSTOP) while timing
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


def version_dir(name: str, repository: Path = REPOSITORY) -> Path:
    """The newest version folder of a model in a repository."""
    versions = [p for p in (repository / name).iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name))


def cpu_ticks() -> dict[int, tuple[int, str]]:
    """CPU time (clock ticks, user + system) and command line of every process, from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):
            continue
        out[int(entry.name)] = (int(fields[11]) + int(fields[12]), cmd[:160])
    return out


def other_cpu_use(before: dict[int, tuple[int, str]], seconds: float, mine: tuple[str, ...]) -> list[dict]:
    """Processes that used more than 5 % of a CPU between ``before`` and now, except ours
    (command lines containing one of ``mine``): who else ran during a timed window."""
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (ticks, cmd) in cpu_ticks().items():
        used = (ticks - before.get(pid, (0, ""))[0]) / hz
        if pid != os.getpid() and used > 0.05 * seconds and not any(m in cmd for m in mine):
            busy.append({"pid": pid, "cpu_s": round(used, 1), "cmd": cmd})
    return sorted(busy, key=lambda b: -b["cpu_s"])


@contextlib.contextmanager
def quiet_machine(enabled: bool = True, mine: tuple[str, ...] = ("osr.serve", "peer_service", "wrk", "bench/perf_",
                                                                   "tritonserver", "triton_backend")
                  ) -> Iterator[dict]:
    """A timed window with the background training (TRAINING_PATTERNS) paused with SIGSTOP and
    always resumed with SIGCONT (on return, exception, SIGINT or SIGTERM). Yields a record that
    says which processes were paused, how long, and which others used the CPU meanwhile."""
    record: dict = {"paused_with_sigstop": [], "seconds": 0.0, "other_cpu_use": []}
    if not enabled:
        yield record
        return
    found = set()
    for pattern in TRAINING_PATTERNS:
        out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        found.update(int(p) for p in out)
    found.discard(os.getpid())
    ticks = cpu_ticks()
    pids = sorted(found)

    def resume() -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGCONT)

    def on_signal(signum, frame):  # noqa: ANN001
        resume()
        raise SystemExit(128 + signum)

    steal_before = steal_seconds()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    record["paused_with_sigstop"] = [{"pid": p, "cmd": ticks.get(p, (0, ""))[1]} for p in pids]
    t0 = time.monotonic()
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGSTOP)
        yield record
    finally:
        resume()
        for s, handler in previous.items():
            signal.signal(s, handler)
        record["seconds"] = round(time.monotonic() - t0, 1)
        record["other_cpu_use"] = other_cpu_use(ticks, record["seconds"], mine)
        # CPU time the hypervisor gave to other guests while this VM wanted it (all CPUs together)
        record["steal_cpu_s"] = round(steal_seconds() - steal_before, 1)


def steal_seconds() -> float:
    """Steal time of all CPUs so far (/proc/stat), in seconds."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def wait_until_idle(max_wait_s: float = 120.0, patterns: tuple[str, ...] = ("pytest",)) -> float:
    """Wait (at most ``max_wait_s``) until no process matches ``patterns`` (other people's test
    runs): seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_wait_s:
        running = [p for pat in patterns
                   for p in subprocess.run(["pgrep", "-f", pat], capture_output=True, text=True).stdout.split()
                   if int(p) != os.getpid()]
        if not running:
            break
        time.sleep(2)
    return round(time.monotonic() - t0, 1)


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
