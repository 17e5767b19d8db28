"""Images per second through the Predictor at one image per call, for any exported model: the
figure a model card needs (decode + resize + onnxruntime + result rows, real CIFAR-10 JPEGs).

    python bench/perf_model_card.py --repository exports --model cifar10-lite0-96px

Prints img/s per round (median of --rounds); a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from osr.serve.predictor import Predictor
from perf_common import REPOSITORY, cifar_jpegs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=REPOSITORY)
    ap.add_argument("--model", default=None)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    jpegs = cifar_jpegs(a.images)
    with Predictor.from_repository(a.repository, a.model) as predictor:
        for data in jpegs[:20]:  # warm-up
            predictor.classify_bytes([("x.jpg", data)])
        rates = []
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            for data in jpegs:
                predictor.classify_bytes([("x.jpg", data)])
            rates.append(len(jpegs) / (time.perf_counter() - t0))
    print(f"{a.repository}/{a.model}: {statistics.median(rates):.0f} img/s at one image per call "
          f"(rounds: {', '.join(f'{r:.0f}' for r in rates)})")


if __name__ == "__main__":
    main()
