"""osr-serve's dynamic batching defaults (serve/settings.py max_batch, max_wait_ms) measured on the
bundled default model and its int8 variant, one image per request, at 1, 8 and 32 connections.

    python bench/perf_batching.py --rounds 2

Two sweeps around the current defaults (one changed at a time): --max-batch over --batches at
--max-wait-ms 2, and --max-wait-ms over --waits at --max-batch 32. Each (sweep, model) is one
quiet window (background training paused with SIGSTOP, resumed after); in it every setting gets
its own osr-serve (--workers 2 unless --workers) loaded by wrk at each connection count
(bench/perf_peer.py's load_service). Writes bench/results/perf-lite0/batching.json (or --out).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from perf_common import MODELS, cifar_jpegs, quiet_machine, save, summary, wait_until_idle
from perf_peer import RESULTS_DIR, load_service


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    ap.add_argument("--waits", type=float, nargs="+", default=[0, 1, 2, 5, 10])
    ap.add_argument("--default-batch", type=int, default=32)
    ap.add_argument("--default-wait", type=float, default=2.0)
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-pause", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "batching.json")
    a = ap.parse_args()

    image = cifar_jpegs(1)[0]
    sweeps = {"max_batch": [(b, a.default_wait) for b in a.batches],
              "max_wait_ms": [(a.default_batch, w) for w in a.waits if w != a.default_wait]}
    runs: dict[str, list[dict]] = {}
    windows = []
    for r in range(a.rounds):
        for sweep, settings in sweeps.items():
            for kind in (a.models if r % 2 == 0 else a.models[::-1]):
                waited = wait_until_idle()
                ordered = settings if r % 2 == 0 else settings[::-1]
                with quiet_machine(not a.no_pause) as window:
                    for batch, wait in ordered:
                        extra = ["--max-batch", str(batch), "--max-wait-ms", str(wait)]
                        result = load_service("osr", MODELS[kind], image, a.connections, a.duration, a.workers, extra)
                        for c, load in result["loads"].items():
                            runs.setdefault(f"{kind}/b{batch}/w{wait:g}/{c}", []).append(load)
                windows.append({"round": r + 1, "sweep": sweep, "model": kind, "waited_for_idle_s": waited, **window})
                print(f"round {r + 1} {sweep} {kind}: window {window['seconds']} s, other CPU use "
                      f"{[(o['cmd'][:60], o['cpu_s']) for o in window['other_cpu_use']]}", flush=True)
    results = {key: {"requests_per_s": summary([x["requests_per_s"] for x in v]),
                     "p50_ms": summary([x["p50_ms"] for x in v]), "p99_ms": summary([x["p99_ms"] for x in v]),
                     "errors": sum(x["errors"] for x in v), "requests": sum(x["requests"] for x in v),
                     "per_round": v}
               for key, v in runs.items()}
    save("batching", {"workers": a.workers, "duration_s": a.duration, "connections": a.connections,
                      "defaults_before": {"max_batch": a.default_batch, "max_wait_ms": a.default_wait},
                      "results": results, "windows": windows}, a.out)
    for key in sorted(results):
        r = results[key]
        print(f"{key:28s} {r['requests_per_s']['median']:7.1f} req/s  p50 {r['p50_ms']['median']:6.1f}  "
              f"p99 {r['p99_ms']['median']:6.1f}  errors {r['errors']}")


if __name__ == "__main__":
    main()
