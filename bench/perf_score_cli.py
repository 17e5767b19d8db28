"""osr-score images per second on a folder of real CIFAR-10 JPEGs vs a bare loop of the same
work (read, PIL decode, batch of 64, session.run), fp32 and int8, interleaved round robin.

    python bench/perf_score_cli.py --images 2000

osr-score runs in this process through its entry point (osr.serve.score_cli.main, the function
the console script calls, JSONL output): model load, folder walk, decode pool, inference and
writing the rows all count. The bare loop counts its session creation too.
Writes bench/results/perf_score_cli.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from osr.serve import score_cli
from perf_common import OLD_MODELS as MODELS, REPOSITORY, fmt, round_robin, save, single_model_repository, summary, write_jpeg_folder


def bare_loop(model_path: Path, paths: list[Path], batch_size: int, threads: int | None) -> None:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    for start in range(0, len(paths), batch_size):
        batch = np.stack([np.asarray(Image.open(io.BytesIO(p.read_bytes())).convert("RGB"))
                          for p in paths[start:start + batch_size]])
        session.run(None, {"images": batch})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: onnxruntime's)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "images"
        paths = write_jpeg_folder(folder, a.images)

        def cli_case(kind: str):
            repository = single_model_repository(MODELS[kind], tmp)

            def measure() -> float:
                out = tmp / f"{kind}.jsonl"
                out.unlink(missing_ok=True)
                argv = [str(folder), "--out", str(out), "--model-repository", str(repository),
                        "--batch-size", str(a.batch_size), *(["--threads", str(a.threads)] if a.threads else [])]
                t0 = time.perf_counter()
                with contextlib.redirect_stderr(io.StringIO()):
                    code = score_cli.main(argv)
                seconds = time.perf_counter() - t0
                rows = sum(1 for _ in out.open())
                if code != 0 or rows != a.images:
                    raise SystemExit(f"osr-score exited {code} with {rows} rows for {a.images} images")
                return a.images / seconds
            return measure

        def bare_case(kind: str):
            model_path = REPOSITORY / MODELS[kind] / "1" / "model.onnx"

            def measure() -> float:
                t0 = time.perf_counter()
                bare_loop(model_path, paths, a.batch_size, a.threads)
                return a.images / (time.perf_counter() - t0)
            return measure

        cases = {}
        for kind in MODELS:
            cases[f"osr_score/{kind}"] = cli_case(kind)
            cases[f"bare_loop/{kind}"] = bare_case(kind)
        rates = {name: summary(v) for name, v in round_robin(cases, a.rounds, warmup=0).items()}
    ratios = {kind: rates[f"osr_score/{kind}"]["median"] / rates[f"bare_loop/{kind}"]["median"] for kind in MODELS}
    for name, s in rates.items():
        print(f"{name:18s} {fmt(s)} img/s")
    print("osr-score / bare loop:", {k: round(v, 2) for k, v in ratios.items()})
    save("perf_score_cli", {"images": a.images, "batch_size": a.batch_size, "threads": a.threads,
                            "decode_workers": min(4, os.cpu_count() or 1), "images_per_second": rates,
                            "ratio_osr_score_over_bare": ratios,
                            "target": {"name": "osr-score >= 80% of the bare decode + onnxruntime loop",
                                       **{k: {"ratio": r, "met": r >= 0.8} for k, r in ratios.items()}}}, a.out)


if __name__ == "__main__":
    main()
