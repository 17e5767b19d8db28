"""How the cost of the bundled default model grows: with the input size inside the graph, with the
batch size, and with osr-serve's worker count (throughput, latency, memory per worker).

    python bench/perf_cost.py --rounds 2                 # all three parts
    python bench/perf_cost.py --parts size batch         # in-process parts only

- size: the graph upsamples its 32 px input to 128 px (one Resize node) before EfficientNet-Lite0.
  Without the training checkpoint the graph cannot be re-exported at other sizes, so the Resize
  target in the shipped graph (fp32 and int8) is set to 64, 96, 128 or 160 px: the same network,
  weights and nodes, i.e. the cost a re-export at that size would have (every convolution is
  size-agnostic; TF "same" padding is identical for sizes divisible by 32). The decisions of the
  resized graphs are not meaningful (the weights were trained at 128 px); only their cost is.
  onnxruntime in this process, batch 1 and 32, 1 and 2 intra-op threads.
- batch: the shipped graphs at batch 1 ... 64, 1 and 2 threads: images/s and ms per call.
- workers: osr-serve with 1 to 4 uvicorn workers (default threads: CPUs // workers, at least 1),
  wrk at 8 and 32 connections, one image per request; resident (RSS) and proportional (PSS)
  memory of every process after the load.

Each part of each round is one quiet window (background training paused with SIGSTOP, resumed
after). Writes bench/results/perf-lite0/cost.json (or --out).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
from perf_common import MODELS, cifar_jpegs, quiet_machine, save, summary, version_dir, wait_until_idle
from perf_peer import RESULTS_DIR, load_service


def resized_graph(path: Path, size: int) -> bytes:
    """The graph with its in-graph Resize target set to ``size`` x ``size`` (serialised)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    producers = {out: node for node in model.graph.node for out in node.output}
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    if len(resizes) != 1:
        raise RuntimeError(f"expected one Resize node in {path}, found {len(resizes)}")
    concat = producers[resizes[0].input[3]]  # sizes = Concat(shape[:2], constant [S, S])
    inits = {i.name: i for i in model.graph.initializer}
    target = next(inits[name] for name in concat.input if name in inits)
    values = numpy_helper.to_array(target)
    if values.shape != (2,) or values[0] != values[1]:
        raise RuntimeError(f"unexpected Resize target {values}")
    target.CopyFrom(numpy_helper.from_array(np.array([size, size], dtype=values.dtype), target.name))
    return model.SerializeToString()


def session(model: bytes | str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def timed(sess, images: np.ndarray, batch: int, seconds: float) -> dict:
    """Images/s and ms per call of ``sess`` at ``batch`` for ``seconds`` (after one warm-up call)."""
    x = np.ascontiguousarray(images[:batch])
    sess.run(None, {"images": x})
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {"images": x})
        calls += 1
    wall = time.perf_counter() - t0
    return {"images_per_s": calls * batch / wall, "ms_per_call": wall / calls * 1e3}


def decoded(count: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in cifar_jpegs(count)])


def part_size(models: list[str], sizes: list[int], seconds: float, images: np.ndarray, runs: dict) -> None:
    for kind in models:
        path = version_dir(MODELS[kind]) / "model.onnx"
        for size in sizes:
            graph = resized_graph(path, size)
            for threads in (1, 2):
                sess = session(graph, threads)
                for batch in (1, 32):
                    r = timed(sess, images, batch, seconds)
                    runs.setdefault(f"size/{kind}/{size}px/t{threads}/b{batch}", []).append(r)
                    print(f"  size {kind} {size:3d}px t{threads} b{batch:<2d} {r['images_per_s']:7.1f} img/s "
                          f"{r['ms_per_call']:7.2f} ms/call", flush=True)


def part_batch(models: list[str], batches: list[int], seconds: float, images: np.ndarray, runs: dict) -> None:
    for kind in models:
        path = str(version_dir(MODELS[kind]) / "model.onnx")
        for threads in (1, 2):
            sess = session(path, threads)
            for batch in batches:
                r = timed(sess, images, batch, seconds)
                runs.setdefault(f"batch/{kind}/t{threads}/b{batch}", []).append(r)
                print(f"  batch {kind} t{threads} b{batch:<2d} {r['images_per_s']:7.1f} img/s "
                      f"{r['ms_per_call']:7.2f} ms/call", flush=True)


def part_workers(models: list[str], workers: list[int], connections: list[int], seconds: float, runs: dict) -> None:
    image = cifar_jpegs(1)[0]
    for kind in models:
        for w in workers:
            result = load_service("osr", MODELS[kind], image, connections, seconds, w)
            for c, load in result["loads"].items():
                runs.setdefault(f"workers/{kind}/w{w}/{c}", []).append(load)
            runs.setdefault(f"memory/{kind}/w{w}", []).append(result["memory"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["size", "batch", "workers"], choices=["size", "batch", "workers"])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 160])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--connections", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--seconds", type=float, default=2.0, help="per in-process measurement")
    ap.add_argument("--duration", type=float, default=5, help="seconds of wrk load per connection count")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-pause", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "cost.json")
    a = ap.parse_args()

    images = decoded(64)
    runs: dict[str, list] = {}
    windows = []
    for r in range(a.rounds):
        models = a.models if r % 2 == 0 else a.models[::-1]
        for part in a.parts:
            waited = wait_until_idle()
            with quiet_machine(not a.no_pause) as window:
                if part == "size":
                    part_size(models, a.sizes, a.seconds, images, runs)
                elif part == "batch":
                    part_batch(models, a.batches, a.seconds, images, runs)
                else:
                    part_workers(models, a.workers, a.connections, a.duration, runs)
            windows.append({"round": r + 1, "part": part, "waited_for_idle_s": waited, **window})
            print(f"round {r + 1} {part}: window {window['seconds']} s, other CPU use "
                  f"{[(o['cmd'][:60], o['cpu_s']) for o in window['other_cpu_use']]}", flush=True)
    results = {}
    for key, v in runs.items():
        if key.startswith("memory/"):
            results[key] = v
        elif key.startswith("workers/"):
            results[key] = {"requests_per_s": summary([x["requests_per_s"] for x in v]),
                            "p50_ms": summary([x["p50_ms"] for x in v]), "p99_ms": summary([x["p99_ms"] for x in v]),
                            "errors": sum(x["errors"] for x in v), "per_round": v}
        else:
            results[key] = {"images_per_s": summary([x["images_per_s"] for x in v]),
                            "ms_per_call": summary([x["ms_per_call"] for x in v]), "per_round": v}
    save("cost", {"parts": a.parts, "sizes": a.sizes, "batches": a.batches, "workers": a.workers,
                  "connections": a.connections, "results": results, "windows": windows,
                  "size_note": "Resize target of the shipped graph changed (no checkpoint to re-export); "
                               "cost only, decisions not meaningful away from 128 px"}, a.out)


if __name__ == "__main__":
    main()
