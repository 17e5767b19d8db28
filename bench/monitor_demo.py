"""The unknown-flag monitor on real data: CIFAR-10 test images through the bundled model.

    .venv/bin/python bench/monitor_demo.py [--data ../shared/datasets/cifar10/test.npz]
                                           [--out bench/results/monitor_demo.json]

The bundled model (model_repository/cifar10-ad, CIFAR-10 split 0) knows airplane, automobile,
deer, frog, horse and truck; bird, cat, dog and ship are unknown to it. The test images are
sent as their JPEG bytes (as a client would upload them). Three views of the same monitor
(serve/monitor.py):

1. batches, what ``osr-score --summary`` prints: the 6000 known-class test images alone, then
   mixes with 5 / 10 / 20 / 40 % unknown-class images (the 40 % mix is the whole test set);
2. windows of 1000 images (the service's window), non-overlapping, in a shuffled stream: how many
   windows alarm on known-only traffic and on traffic with 20 % unknowns;
3. the live service: 1000 known-class images posted to /v1/classify, /metrics read; then 1000
   images with 20 % unknowns, /metrics read again (the window then holds only those).

--write-folders DIR writes DIR/known/ (the 6000 known-class test JPEGs) and DIR/mix20/ (those
plus 1500 unknown-class ones, 20 %) for ``osr-score DIR/known --out known.jsonl --summary``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from perf_common import machine  # noqa: E402  (bench/ is not a package)

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
WINDOW = 1000
MIX_SHARES = (0.05, 0.10, 0.20, 0.40)


def load_jpeg_pack(path: Path) -> tuple[list[bytes], np.ndarray]:
    pack = np.load(path)
    data, offsets = pack["jpeg"], pack["offsets"]
    return [data[offsets[i]:offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)], pack["labels"]


def mix(known: np.ndarray, unknown: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """All known indices plus enough unknown ones for ``share`` of the total (shuffled)."""
    count = min(len(unknown), round(share * len(known) / (1 - share)))
    return rng.permutation(np.concatenate([known, rng.choice(unknown, count, replace=False)]))


def window_alarms(rows: list[dict], order: np.ndarray, model) -> dict:
    summaries = [model.summarize([rows[i] for i in order[start:start + WINDOW]])
                 for start in range(0, len(order) - WINDOW + 1, WINDOW)]
    return {"windows": len(summaries), "rate_alarms": sum(s.rate_alarm for s in summaries),
            "uniformity_alarms": sum(s.uniformity_alarm for s in summaries),
            "either": sum(s.rate_alarm or s.uniformity_alarm for s in summaries),
            "ks_p_values": [s.ks_p_value for s in summaries],
            "unknown_rates": [s.unknown_rate for s in summaries]}


def live_service(images: list[bytes], known: np.ndarray, unknown: np.ndarray, rng: np.random.Generator) -> dict:
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from osr.serve.app import create_app
    from osr.serve.settings import Settings

    def gauges(client) -> dict:
        values = {}
        for family in text_string_to_metric_families(client.get("/metrics").text):
            for sample in family.samples:
                if sample.name.startswith("osr_monitor_"):
                    bound = sample.labels.get("bound")
                    values[sample.name[len("osr_monitor_"):] + (f"_{bound}" if bound else "")] = sample.value
        return values

    def post(client, indices: np.ndarray) -> None:
        for start in range(0, len(indices), 50):
            files = [("files", (f"{i}.jpg", images[i], "image/jpeg")) for i in indices[start:start + 50]]
            assert client.post("/v1/classify", files=files).status_code == 200

    settings = Settings(model_repository=ROOT / "model_repository", model="cifar10-ad", max_files=64)
    with TestClient(create_app(settings)) as client:
        while client.get("/readyz").status_code != 200:
            time.sleep(0.05)
        post(client, rng.choice(known, WINDOW, replace=False))
        after_known = gauges(client)
        n_unknown = WINDOW // 5
        post(client, rng.permutation(np.concatenate([rng.choice(known, WINDOW - n_unknown, replace=False),
                                                     rng.choice(unknown, n_unknown, replace=False)])))
        after_mix = gauges(client)
    return {"after_1000_known": after_known, "after_1000_with_20pct_unknown": after_mix}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "cifar10" / "test.npz")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "monitor_demo.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-folders", type=Path, default=None, metavar="DIR",
                        help="only write DIR/known and DIR/mix20 as JPEG files, for osr-score --summary")
    args = parser.parse_args(argv)

    from osr.serve import load_model

    images, labels = load_jpeg_pack(args.data)
    rng = np.random.default_rng(args.seed)
    with load_model(ROOT / "model_repository", "cifar10-ad") as model:
        known_names = set(model.classes)
        is_known = np.array([CIFAR10[label] in known_names for label in labels])
        known, unknown = np.flatnonzero(is_known), np.flatnonzero(~is_known)
        if args.write_folders:
            for name, indices in (("known", known), ("mix20", mix(known, unknown, 0.20, rng))):
                folder = args.write_folders / name
                folder.mkdir(parents=True, exist_ok=True)
                for i in indices:
                    (folder / f"{i:05d}_{CIFAR10[labels[i]]}.jpg").write_bytes(images[i])
                print(f"{len(indices)} images -> {folder}")
            return 0
        start = time.perf_counter()
        rows = model.classify(images, names=[str(i) for i in range(len(images))])
        seconds = time.perf_counter() - start

        batches = {"known only": model.summarize([rows[i] for i in known]).to_dict()}
        for share in MIX_SHARES:
            order = mix(known, unknown, share, rng)
            batches[f"{round(share * 100)} % unknown"] = model.summarize([rows[i] for i in order]).to_dict()
        windows = {
            "known only": window_alarms(rows, rng.permutation(known), model),
            "20 % unknown": window_alarms(rows, mix(known, unknown, 0.20, rng), model),
        }
    service = live_service(images, known, unknown, rng)

    print(f"classified {len(images)} CIFAR-10 test images in {seconds:.1f} s")
    print(f"{'batch':<14} {'images':>6} {'unknown rate':>12} {'99 % band':>17} {'rate':>5} "
          f"{'KS D':>7} {'KS p':>9} {'uniform':>7}")
    for name, s in batches.items():
        band = f"[{s['band'][0]:.4f}, {s['band'][1]:.4f}]"
        print(f"{name:<14} {s['images']:>6} {s['unknown_rate']:>12.4f} {band:>17} "
              f"{'ALARM' if s['rate_alarm'] else 'ok':>5} {s['ks_statistic']:>7.4f} {s['ks_p_value']:>9.2g} "
              f"{'ALARM' if s['uniformity_alarm'] else 'ok':>7}")
    for name, w in windows.items():
        print(f"windows of {WINDOW}, {name}: {w['either']} of {w['windows']} alarm "
              f"(rate {w['rate_alarms']}, uniformity {w['uniformity_alarms']})")
    for name, g in service.items():
        print(f"/metrics {name}: unknown_rate {g['unknown_rate']:.3f} band [{g['unknown_rate_band_low']:.3f}, "
              f"{g['unknown_rate_band_high']:.3f}], ks_statistic {g['ks_statistic']:.4f}, "
              f"ks_p_value {g['ks_p_value']:.3g}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "python bench/monitor_demo.py" + (f" --seed {args.seed}" if args.seed else ""),
        "data": str(args.data.name), "model": "model_repository/cifar10-ad version 1", "window": WINDOW,
        "batches": batches, "windows": windows, "service": service, "classify_seconds": seconds,
        "machine": machine(),
    }, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
