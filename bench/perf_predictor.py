"""The predictor's overhead: Predictor.classify_bytes (decode + resize + onnxruntime + result
rows) vs a bare loop of the same steps (PIL decode, PIL resize, session.run), fp32 and int8,
one image per call and 64 per call, interleaved round robin.

    python bench/perf_predictor.py

Images: real CIFAR-10 test JPEGs (32x32, the resize is a no-op) and the same images upscaled to
256x256 JPEGs (the resize does work). Writes bench/results/perf_predictor.json.
"""

from __future__ import annotations

import argparse
import io
import itertools
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from osr.serve.predictor import Predictor
from perf_common import OLD_MODELS as MODELS, REPOSITORY, cifar_jpegs, fmt, rate, round_robin, save, summary


def upscaled(jpegs: list[bytes], size: int) -> list[bytes]:
    out = []
    for data in jpegs:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.BICUBIC).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def bare_session(path: Path, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bare_step(session: ort.InferenceSession, size: int):
    """The same steps without the predictor: decode, RGB, resize (square inputs), stack, run."""
    def run(items: list[bytes]) -> list[np.ndarray]:
        arrays = []
        for data in items:
            image = Image.open(io.BytesIO(data)).convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            arrays.append(np.asarray(image))
        return session.run(None, {"images": np.stack(arrays)})
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", type=Path, default=REPOSITORY)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: onnxruntime's, as served)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.4)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    cifar = cifar_jpegs(256)
    inputs = {"cifar32": cifar, "jpeg256": upscaled(cifar[:64], 256)}
    predictors = {k: Predictor.from_repository(a.repository, name, threads=a.threads) for k, name in MODELS.items()}
    sessions = {k: bare_session(a.repository / name / "1" / "model.onnx", a.threads) for k, name in MODELS.items()}

    def case(fn, images: list[bytes], n: int):
        groups = itertools.cycle([images[i:i + n] for i in range(0, len(images) - n + 1, n)])
        return lambda: rate(lambda: fn(next(groups)), n, a.seconds)

    cases = {}
    for kind, predictor in predictors.items():
        bare = bare_step(sessions[kind], predictor.image_size)
        for source, images in inputs.items():
            for n in a.batches:
                key = f"{kind}/{source}/b{n}"
                cases[f"predictor/{key}"] = case(lambda items, p=predictor: p.classify_bytes(
                    [(f"{i}.jpg", d) for i, d in enumerate(items)]), images, n)
                cases[f"bare/{key}"] = case(bare, images, n)
    rates = {name: summary(v) for name, v in round_robin(cases, a.rounds).items()}
    ratios = {key.removeprefix("predictor/"): rates[key]["median"] / rates["bare/" + key.removeprefix("predictor/")]["median"]
              for key in rates if key.startswith("predictor/")}
    for name, s in rates.items():
        print(f"{name:34s} {fmt(s)} img/s")
    for key, r in ratios.items():
        print(f"predictor/bare {key:22s} {r:.2f}")
    save("perf_predictor", {"threads": a.threads, "images_per_second": rates, "ratio_predictor_over_bare": ratios},
         a.out)


if __name__ == "__main__":
    main()
