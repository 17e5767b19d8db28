"""Images per second of one training step: CE, CE+CutMix (mixed step) and AD (mixed and
ordinary steps), with the same student, on this machine's CPU (or GPU with --device cuda).

    python bench/train_step_speed.py --arch classifier32 --width 0.25 --teacher-width 0.25

Writes bench/results/train_step_speed.json. A benchmark, not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from osr.train.config import TrainConfig
from osr.train.models import build_model
from osr.train.steps import Step


def make_runner(step: Step, model, x, y, mixed: bool, amp: bool = False, batch=None):
    """A callable timing one training step (forward, loss, backward, SGD update). ``batch``: a
    callable making the step's input each time (e.g. augmentation on the device), timed with it;
    ``amp``: bf16 autocast on CUDA, as osr-train does."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    def run() -> float:
        t0 = time.perf_counter()
        with autocast():
            loss, _ = step(model, batch() if batch else x, y, mixed)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if y.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return run


# The steps timed (name -> config, mixed step?); AD with p_mix 0.5 alternates its two kinds.
STEP_CASES = {
    "ce": (TrainConfig(method="ce"), False),
    "ce_cutmix_mixed_step": (TrainConfig(method="ce", mix="cutmix"), True),
    "ad_ordinary_step": (TrainConfig(method="ad", mix="cutmix", teacher="t"), False),
    "ad_mixed_step": (TrainConfig(method="ad", mix="cutmix", teacher="t"), True),
}


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Student/teacher architecture and batch size, shared with bench/perf_train.py."""
    p.add_argument("--arch", default="classifier32")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--teacher-arch", default=None, help="default: the student's arch")
    p.add_argument("--teacher-width", type=float, default=None, help="default: the student's width")
    p.add_argument("--batch-size", type=int, default=128)


def step_runners(a: argparse.Namespace, classes: int, x: torch.Tensor, y: torch.Tensor,
                 names: list[str]) -> dict:
    """One timed step runner per case in ``names``, each with a fresh student and the shared teacher."""
    teacher = build_model(a.teacher_arch or a.arch, classes, a.teacher_width or a.width).to(x.device).eval()
    runners = {}
    for name in names:
        cfg, mixed = STEP_CASES[name]
        torch.manual_seed(0)
        student = build_model(a.arch, classes, a.width).to(x.device).train()
        runners[name] = make_runner(Step(cfg, classes, teacher if cfg.method != "ce" else None), student, x, y, mixed)
    return runners


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_step_speed.json"))
    a = p.parse_args()
    torch.manual_seed(0)
    dev = torch.device(a.device)
    x = torch.randn(a.batch_size, 3, a.image_size, a.image_size, device=dev)
    y = torch.randint(0, a.classes, (a.batch_size,), device=dev)
    runners = step_runners(a, a.classes, x, y, list(STEP_CASES))
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(3 + a.repeats):  # round robin, so load changes on a shared machine hit every case alike
        for name, run in runners.items():
            t = run()
            if i >= 3:
                times[name].append(t)
    results = {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
                      "images_per_second": a.batch_size / statistics.median(t)} for name, t in times.items()}
    ce = results["ce"]["median_s"]
    # AD with p_mix = 0.5 alternates ordinary and mixed steps: its average step cost.
    ad_avg = 0.5 * (results["ad_ordinary_step"]["median_s"] + results["ad_mixed_step"]["median_s"])
    summary = {
        "ratio_cutmix_to_ce": results["ce_cutmix_mixed_step"]["median_s"] / ce,
        "ratio_ad_mixed_to_ce": results["ad_mixed_step"]["median_s"] / ce,
        "ratio_ad_average_to_ce": ad_avg / ce,
    }
    out = {"args": vars(a), "machine": {"platform": platform.platform(), "processor": platform.processor(),
                                       "torch": torch.__version__, "threads": torch.get_num_threads()},
           "results": results, "summary": summary}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    for k, v in results.items():
        print(f"{k:24s} {v['images_per_second']:8.1f} img/s  (median {v['median_s'] * 1e3:.1f} ms/step)")
    for k, v in summary.items():
        print(f"{k:24s} {v:.2f}x")


if __name__ == "__main__":
    main()
