"""Issue 11, item 3: epoch times of the paper-scale grid's runs on a GPU, option by option.

For each dataset shape of bench/gpu_paper_grid.sh (CIFAR-10 6/4: 27,000 training images at 32 px;
Tiny-ImageNet 20/180: 9,000 at 64 px) and each kind of run in it (ResNet-50 CE teacher; ResNet-18
students with CE, CE+CutMix, KD+CutMix, AD+CutMix from that teacher), times training steps on
synthetic batches (the pixels do not change the time) with the GPU options added one by one:

    base           fp32, NCHW; each batch copied from pinned host memory (per-image augmentation on
                   the host, as osr-train does without --batch-augment, is NOT timed: it is the CPU's cost)
    channels_last  + --channels-last
    bf16           + --amp (bf16 autocast)
    batch_augment  + --batch-augment: uint8 images on the device, crop+flip as one gather per batch
    compile        + --compile (ResNet-18 CE and the teacher only: compiling takes about a minute each)

and projects epoch seconds = steps per epoch x median step time (CutMix/KD/AD alternate ordinary
and mixed steps, p_mix 0.5), plus one evaluation of the 10,000 test images (osr-train's predict_logits). ``--procs K`` then runs
K copies of one case at once (runs sharing the GPU, as the grid does; they time their steps from one
common start, --sync-s after launch) and sums their images/s.
Results are written after every case, so a lease that ends early keeps what was measured.

    python bench/gpu_epoch_times.py --device cuda --out $OUT/gpu_epoch_times.json [--budget-s 420]
    python bench/gpu_epoch_times.py --device cpu --datasets cifar10 --runs "resnet18 ce" --options base --steps 1 --eval-images 8 --procs 2  # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from osr.train.augment import batch_crop_flip
from osr.train.config import TrainConfig
from osr.train.models import build_model
from osr.train.steps import Step
from osr.train.trainer import Normalize, predict_logits

sys.path.insert(0, str(Path(__file__).parent))
from train_step_speed import make_runner  # noqa: E402  (bench/ is the script's folder)

# name -> (training images of split 0 after the 10 % calibration hold-out, image size, known classes)
DATASETS = {"cifar10": (27_000, 32, 6), "tiny_imagenet": (9_000, 64, 20)}
# name -> (arch, method, mix); KD and AD learn from the ResNet-50 teacher
RUNS = {"resnet50 teacher ce": ("resnet50", "ce", "none"), "resnet18 ce": ("resnet18", "ce", "none"),
        "resnet18 ce+cutmix": ("resnet18", "ce", "cutmix"), "resnet18 kd+cutmix": ("resnet18", "kd", "cutmix"),
        "resnet18 ad+cutmix": ("resnet18", "ad", "cutmix")}
OPTIONS = ["base", "channels_last", "bf16", "batch_augment", "compile"]  # cumulative, in this order
COMPILED_RUNS = ("resnet50 teacher ce", "resnet18 ce")


def time_case(dataset: str, run: str, option: str, device: torch.device, batch_size: int, steps: int,
              eval_images: int = 10_000, start_at: float | None = None) -> dict:
    """Median step times of one case. ``start_at`` (a time.time()): after warming up, wait until
    then before timing, so that copies sharing the GPU time their steps at the same moment."""
    n_train, size, k = DATASETS[dataset]
    arch, method, mix = RUNS[run]
    on = OPTIONS[: OPTIONS.index(option) + 1]
    fmt = torch.channels_last if "channels_last" in on else torch.contiguous_format
    torch.manual_seed(0)
    student = build_model(arch, k).to(device, memory_format=fmt).train()
    teacher = build_model("resnet50", k).to(device, memory_format=fmt).eval() if method != "ce" else None
    if "compile" in on:
        student = torch.compile(student)
        teacher = torch.compile(teacher) if teacher is not None else None
    cfg = TrainConfig(method=method, mix=mix, teacher="t" if teacher is not None else None)
    y = torch.randint(0, k, (batch_size,), device=device)
    if "batch_augment" in on:
        images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
        batch = lambda: (batch_crop_flip(images).float() / 255).contiguous(memory_format=fmt)  # noqa: E731
    else:
        host = torch.rand(batch_size, 3, size, size)
        host = host.pin_memory() if device.type == "cuda" else host
        batch = lambda: host.to(device, non_blocking=True).contiguous(memory_format=fmt)  # noqa: E731
    step = Step(cfg, k, teacher)
    kinds = [False, True] if mix != "none" else [False]  # p_mix 0.5: ordinary and mixed steps alike
    runners = {m: make_runner(step, student, None, y, m, amp="bf16" in on and device.type == "cuda", batch=batch)
               for m in kinds}
    t0 = time.perf_counter()
    for m in kinds:  # warm-up (and compilation)
        for _ in range(3):
            runners[m]()
    warmup_s = time.perf_counter() - t0
    late_s = 0.0
    if start_at is not None:
        late_s = max(0.0, time.time() - start_at)  # > 0: this copy's warm-up overran the common start
        time.sleep(max(0.0, start_at - time.time()))
    med = {m: statistics.median(runners[m]() for _ in range(steps)) for m in kinds}
    step_s = statistics.mean(med.values())
    eval_s = time_eval(student, size, device, "bf16" in on and device.type == "cuda", eval_images)
    steps_per_epoch = n_train // batch_size
    return {"dataset": dataset, "run": run, "option": option, "batch_size": batch_size,
            "step_ms": {("mixed" if m else "ordinary"): round(1e3 * v, 2) for m, v in med.items()},
            "images_per_second": round(batch_size / step_s, 1), "steps_per_epoch": steps_per_epoch,
            "eval_s": round(eval_s, 2), "epoch_s": round(steps_per_epoch * step_s, 2),
            "epoch_s_with_eval": round(steps_per_epoch * step_s + eval_s, 2), "warmup_s": round(warmup_s, 1),
            **({"late_s": round(late_s, 1)} if start_at is not None else {})}


def time_eval(model, size: int, device: torch.device, amp: bool, images: int) -> float:
    """Seconds for osr-train's own evaluation pass (``predict_logits``, batch 512) over ``images``
    uint8 images (the test sets hold 10,000), after one warm-up batch."""
    x = np.random.default_rng(0).integers(0, 256, (images, size, size, 3), dtype=np.uint8)
    norm = Normalize([0.5] * 3, [0.5] * 3).to(device)
    predict_logits(model, norm, x[:512], device, amp=amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    predict_logits(model, norm, x, device, amp=amp)  # ends with a copy to the host: synchronised
    return time.perf_counter() - t0


def shared_gpu(case: str, procs: int, a: argparse.Namespace) -> dict:
    """K processes timing the same case at once: their summed throughput on the shared GPU. They
    start timing together (``--start-at``, after every copy's warm-up had ``a.sync_s`` to finish);
    a copy that was late says so (``late_s``), and its overlap with the others is then partial."""
    cmd = [sys.executable, __file__, "--one", case, "--device", a.device, "--batch-size", str(a.batch_size),
           "--steps", str(a.steps), "--eval-images", str(a.eval_images), "--start-at", str(time.time() + a.sync_s)]
    jobs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    results = [json.loads(j.communicate()[0].strip().splitlines()[-1]) for j in jobs]
    return {"case": case, "procs": procs, "images_per_second_each": [r["images_per_second"] for r in results],
            "images_per_second_total": round(sum(r["images_per_second"] for r in results), 1),
            "late_s": [r["late_s"] for r in results]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--options", nargs="+", default=OPTIONS, choices=OPTIONS)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per kind of step")
    ap.add_argument("--eval-images", type=int, default=10_000, help="images of the timed evaluation (the test sets: 10,000)")
    ap.add_argument("--procs", type=int, nargs="*", default=[2, 4],
                    help="also time K copies of 'cifar10:resnet18 ad+cutmix:batch_augment' at once, for each K")
    ap.add_argument("--budget-s", type=float, default=1e9, help="stop starting new cases after this many seconds")
    ap.add_argument("--sync-s", type=float, default=45,
                    help="--procs copies start timing this many seconds after they are launched (time to warm up)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # DATASET:RUN:OPTION, prints one JSON line (--procs children)
    ap.add_argument("--start-at", type=float, help=argparse.SUPPRESS)  # --one: time.time() to start timing at
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu_epoch_times.json"))
    a = ap.parse_args()
    device = torch.device(a.device)
    if a.one:
        print(json.dumps(time_case(*a.one.split(":"), device, a.batch_size, a.steps, a.eval_images, a.start_at)))
        return
    start, out = time.perf_counter(), Path(a.out)
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "cases": [], "shared": [], "stopped_by_budget": False}
    todo = [(d, r, o) for d in a.datasets for r in a.runs for o in a.options if o != "compile" or r in COMPILED_RUNS]
    todo += [("shared", k) for k in a.procs]
    for case in todo:
        if time.perf_counter() - start > a.budget_s:
            report["stopped_by_budget"] = True
            break
        if case[0] == "shared":
            report["shared"].append(r := shared_gpu("cifar10:resnet18 ad+cutmix:batch_augment", case[1], a))
            print(f"{case[1]} runs at once: {r['images_per_second_total']} img/s in all", flush=True)
        else:
            report["cases"].append(r := time_case(*case, device, a.batch_size, a.steps, a.eval_images))
            print(f"{r['dataset']:13s} {r['run']:20s} {r['option']:13s} {r['epoch_s']:8.2f} s/epoch "
                  f"({r['images_per_second']:.0f} img/s, eval {r['eval_s']:.2f} s)", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
