"""The model alone: onnxruntime on the exported graph (fp32 and int8) vs torch eager on the same
weights, batch 1 and 64, 1 and 2 threads; images per second, interleaved round robin.

    python bench/perf_model.py --checkpoint runs/gpu-c10-s0/c32-ad-cutmix/checkpoint.pt

Torch runs osr.export.graph.OsrGraph (uint8 NHWC in, normalisation, model, decision, p-value: the
graph that was exported) rebuilt from the checkpoint; its logits are checked against onnxruntime's
on real CIFAR-10 images first, so both sides really run the same weights.
Writes bench/results/perf_model.json.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from perf_common import OLD_MODELS as MODELS, REPOSITORY, cifar_jpegs, fmt, rate, round_robin, save, summary


def torch_graph(checkpoint: Path, manifest: dict) -> torch.nn.Module:
    from osr.export.graph import OsrGraph
    from osr.train.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    norm = manifest["normalize"]
    n_cal = manifest["threshold"]["n_calibration"]
    # The calibration scores only feed the p-value (a comparison-sum over n_cal values); any
    # n_cal values cost the same, and the label's threshold is the manifest's.
    return OsrGraph(model, norm["mean"], norm["std"], len(manifest["classes"]), manifest["threshold"]["value"],
                    np.linspace(-5, 5, n_cal), manifest.get("score_function", "max_logit")).eval()


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=Path("runs/gpu-c10-s0/c32-ad-cutmix/checkpoint.pt"))
    ap.add_argument("--repository", type=Path, default=REPOSITORY)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.3, help="length of one measurement")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    manifest = json.loads((a.repository / MODELS["fp32"] / "1" / "manifest.json").read_text())
    graph = torch_graph(a.checkpoint, manifest)
    images = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in cifar_jpegs(max(a.batches))])
    models = {k: a.repository / name / "1" / "model.onnx" for k, name in MODELS.items()}
    sessions = {(k, t): session(p, t) for k, p in models.items() for t in a.threads}

    with torch.inference_mode():
        torch_logits = graph(torch.from_numpy(images))[0].numpy()
    ort_logits = sessions[("fp32", a.threads[0])].run(["logits"], {"images": images})[0]
    parity = float(np.abs(torch_logits - ort_logits).max())
    if parity > 1e-3:
        raise SystemExit(f"torch and onnxruntime disagree (max |logit diff| {parity}): not the same weights")

    def ort_case(kind: str, threads: int, batch: np.ndarray):
        s = sessions[(kind, threads)]
        return lambda: rate(lambda: s.run(None, {"images": batch}), len(batch), a.seconds)

    def torch_case(threads: int, batch: np.ndarray):
        x = torch.from_numpy(batch)

        def measure() -> float:
            torch.set_num_threads(threads)
            with torch.inference_mode():
                return rate(lambda: graph(x), len(batch), a.seconds)
        return measure

    cases = {}
    for threads in a.threads:
        for n in a.batches:
            batch = np.ascontiguousarray(images[:n])
            cases[f"torch_eager/t{threads}/b{n}"] = torch_case(threads, batch)
            for kind in models:
                cases[f"ort_{kind}/t{threads}/b{n}"] = ort_case(kind, threads, batch)
    rates = {name: summary(v) for name, v in round_robin(cases, a.rounds).items()}

    ratios = {}
    for threads in a.threads:
        for n in a.batches:
            key = f"t{threads}/b{n}"
            eager = rates[f"torch_eager/{key}"]["median"]
            ratios[key] = {f"ort_{k}_over_torch": rates[f"ort_{k}/{key}"]["median"] / eager for k in models}
            ratios[key]["int8_over_fp32"] = rates[f"ort_int8/{key}"]["median"] / rates[f"ort_fp32/{key}"]["median"]
    target = min(r["ort_fp32_over_torch"] for k, r in ratios.items() if k.endswith("/b1"))
    result = {"images_per_second": rates, "ratios": ratios, "max_abs_logit_diff_torch_vs_ort": parity,
              "target": {"name": "onnxruntime >= 1.5x torch eager at batch 1", "worst_ratio": target,
                         "met": target >= 1.5}}
    for name, s in rates.items():
        print(f"{name:24s} {fmt(s)} img/s")
    for key, r in ratios.items():
        print(key, {k: round(v, 2) for k, v in r.items()})
    print("target onnxruntime >= 1.5x torch at batch 1:", result["target"])
    save("perf_model", result, a.out)


if __name__ == "__main__":
    main()
