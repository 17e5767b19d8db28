"""osr-serve over HTTP on 127.0.0.1 under bench/load_serve.py's bounded load: 1 and 2 uvicorn
workers, one and eight images per request, fp32 and int8; requests/s, images/s, p50/p99 latency,
errors, and the ratio to the bare predictor's single-image throughput measured by the same
load_serve run. Configurations run round robin (--rounds times each).

    python bench/perf_service.py

Writes bench/results/perf_service.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from perf_common import OLD_MODELS as MODELS, ROOT, save, single_model_repository, summary

LOAD_SERVE = ROOT / "bench" / "load_serve.py"


def default_client() -> str:
    """wrk when installed: a C client leaves the server the CPU a Python client would take."""
    return "wrk" if shutil.which("wrk") else "python"


def run_load(model: str, workers: int, images_per_request: int, requests: int, concurrency: int,
             threads: int | None = None, extra: list[str] | None = None, client: str = "python",
             duration: int = 8) -> dict:
    """One bench/load_serve.py run (its own osr-serve process); its JSON result. ``requests``
    bounds the Python client, ``duration`` (seconds) bounds wrk."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "load.json"
        repository = single_model_repository(model, Path(tmp))
        cmd = [sys.executable, str(LOAD_SERVE), "--model-repository", str(repository),
               "--workers", str(workers), "--requests", str(requests), "--concurrency", str(concurrency),
               "--images-per-request", str(images_per_request), "--out", str(out),
               "--client", client, "--duration", str(duration),
               *(["--threads", str(threads)] if threads else []), *(["--extra", *extra] if extra else [])]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def collect(runs: list[dict]) -> dict:
    """Median and spread over the rounds of one configuration."""
    return {
        "requests_per_s": summary([r["requests_per_s"] for r in runs]),
        "images_per_s": summary([r["images_per_s"] for r in runs]),
        "p50_ms": summary([r["latency_ms"]["p50"] for r in runs]),
        "p99_ms": summary([r["latency_ms"]["p99"] for r in runs]),
        "errors": sum(r["errors"] for r in runs), "requests": sum(r["requests"] for r in runs),
        "bare_predictor_single_image_per_s": summary([r["bare_predictor_single_image_per_s"] for r in runs]),
        "ratio_to_bare_predictor": summary([r["ratio_to_bare_predictor"] for r in runs]),
        "rss_mb_after": max(r["rss_mb"]["after"] for r in runs),
        "first_errors": [e for r in runs for e in r["first_errors"]][:3],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--images-per-request", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--images", type=int, default=320, help="images sent per configuration and round")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads per worker (default: onnxruntime's)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--client", choices=["python", "wrk"], default=default_client(),
                    help="load generator (default: wrk when installed)")
    ap.add_argument("--duration", type=int, default=6, help="seconds per configuration with wrk")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    configs = [(m, w, n) for m in a.models for w in a.workers for n in a.images_per_request]
    runs: dict[str, list[dict]] = {}
    for r in range(a.rounds):
        for model, workers, n in configs[r % len(configs):] + configs[:r % len(configs)]:
            key = f"{model}/w{workers}/ipr{n}"
            result = run_load(MODELS[model], workers, n, max(a.concurrency, a.images // n), a.concurrency, a.threads,
                              client=a.client, duration=a.duration)
            runs.setdefault(key, []).append(result)
            print(f"{key:18s} {result['requests_per_s']:7.1f} req/s {result['images_per_s']:7.1f} img/s "
                  f"p50 {result['latency_ms']['p50']:6.1f} ms p99 {result['latency_ms']['p99']:6.1f} ms "
                  f"errors {result['errors']} bare {result['bare_predictor_single_image_per_s']:.1f} img/s "
                  f"ratio {result['ratio_to_bare_predictor']:.2f}", flush=True)
    results = {key: collect(v) for key, v in runs.items()}
    # load_serve's bare predictor uses the server's --threads; osr-serve with several workers
    # shares the CPUs out (serve/app.py onnxruntime_threads), so also compare with the bare
    # predictor at its best thread count on this machine, measured here round robin.
    sys.path.insert(0, str(LOAD_SERVE.parent))
    from load_serve import bare_predictor_rate

    image = (ROOT / "samples" / "airplane.jpg").read_bytes()
    bare: dict[str, dict[str, list[float]]] = {m: {"default": [], "1": []} for m in a.models}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(3):
            for model in a.models:
                repository = str(single_model_repository(MODELS[model], Path(tmp)))
                for threads in bare[model]:
                    bare[model][threads].append(
                        bare_predictor_rate(repository, image, 200, None if threads == "default" else 1))
    best = {m: max(summary(v)["median"] for v in t.values()) for m, t in bare.items()}
    for key, r in results.items():
        r["ratio_to_best_bare_predictor"] = r["images_per_s"]["median"] / best[key.split("/")[0]]
    target = {}
    for model in a.models:
        key = f"{model}/w2/ipr1"
        if key in results:
            ratio = results[key]["ratio_to_bare_predictor"]["median"]
            vs_best = results[key]["ratio_to_best_bare_predictor"]
            target[model] = {"ratio": ratio, "ratio_to_best_bare_predictor": vs_best,
                             "errors": results[key]["errors"],
                             "met": ratio >= 0.6 and results[key]["errors"] == 0,
                             "met_against_best_bare": vs_best >= 0.6 and results[key]["errors"] == 0}
    save("perf_service", {"concurrency": a.concurrency, "threads": a.threads, "client": a.client,
                          "results": results,
                          "bare_predictor_single_image_per_s_by_threads": {
                              m: {t: summary(v) for t, v in by.items()} for m, by in bare.items()},
                          "target": {"name": "2 workers, 1 image/request >= 60% of bare predictor, 0 errors",
                                     **target}}, a.out)


if __name__ == "__main__":
    main()
