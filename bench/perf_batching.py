"""osr-serve's dynamic batching (serve/batcher.py): --max-batch 1 (off) vs 32 (default, with
--max-wait-ms 2), at concurrency 1 (an idle server: the latency cost of waiting) and 8 (the
throughput gain), one image per request, one worker; configurations round robin.

    python bench/perf_batching.py

Writes bench/results/perf_batching.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from perf_common import MODELS, save
from perf_service import collect, default_client, run_load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fp32", choices=list(MODELS))
    ap.add_argument("--max-batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--client", choices=["python", "wrk"], default=default_client())
    ap.add_argument("--duration", type=int, default=6, help="seconds per configuration with wrk")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    configs = [(b, c) for c in a.concurrency for b in a.max_batch]
    runs: dict[str, list[dict]] = {}
    for r in range(a.rounds):
        for max_batch, concurrency in configs[r % len(configs):] + configs[:r % len(configs)]:
            key = f"max_batch{max_batch}/c{concurrency}"
            result = run_load(MODELS[a.model], a.workers, 1, a.requests, concurrency,
                              extra=["--max-batch", str(max_batch), "--max-wait-ms", str(a.max_wait_ms)],
                              client=a.client, duration=a.duration)
            runs.setdefault(key, []).append(result)
            print(f"{key:18s} {result['requests_per_s']:7.1f} req/s p50 {result['latency_ms']['p50']:6.1f} ms "
                  f"p99 {result['latency_ms']['p99']:6.1f} ms errors {result['errors']}", flush=True)
    results = {key: collect(v) for key, v in runs.items()}
    lo, hi = min(a.max_batch), max(a.max_batch)
    effect = {}
    for c in a.concurrency:
        off, on = results[f"max_batch{lo}/c{c}"], results[f"max_batch{hi}/c{c}"]
        effect[f"c{c}"] = {
            "throughput_gain": on["requests_per_s"]["median"] / off["requests_per_s"]["median"],
            "p50_ms_added": on["p50_ms"]["median"] - off["p50_ms"]["median"],
            "p99_ms_added": on["p99_ms"]["median"] - off["p99_ms"]["median"],
        }
        print(f"concurrency {c}: max_batch {hi} vs {lo}", {k: round(v, 2) for k, v in effect[f'c{c}'].items()})
    save("perf_batching", {"model": a.model, "client": a.client, "max_wait_ms": a.max_wait_ms, "workers": a.workers,
                           "results": results, "effect_of_batching": effect}, a.out)


if __name__ == "__main__":
    main()
