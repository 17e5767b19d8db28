"""The teacher's share of a distillation step across resolutions, on this machine's CPU.

A pretrained EfficientNet-Lite0 student sees 32 px batches at 64 px (its input adapter); the
teacher, the same backbone, sees them at --teacher-sizes (its own adapter). Timed, round robin:
a CE step of the student, KD and AD mixed and ordinary steps, and the teacher's forward pass alone
(AD's batched raw+mixed pass, 2 x batch), with the teacher in channels_last or not.

    python bench/perf_teacher.py --teacher-sizes 64 96 128 --repeats 5

Writes bench/results/perf_teacher.json. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from osr.train.adapter import HALF
from osr.train.config import TrainConfig
from osr.train.models import build_model
from osr.train.steps import Step

from train_step_speed import make_runner  # noqa: E402  (bench/ is the script's folder)

DATA_STATS = ([0.49, 0.49, 0.45], [0.25, 0.24, 0.26])


def lite0(classes: int, size: int) -> torch.nn.Module:
    adapter = {"src_mean": DATA_STATS[0], "src_std": DATA_STATS[1], "dst_mean": list(HALF), "dst_std": list(HALF),
               "size": size}
    return build_model("efficientnet_lite0", classes, input=adapter)


def teacher_forward_runner(teacher: torch.nn.Module, x: torch.Tensor):
    both = torch.cat([x, x])

    def run() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            teacher(both)
        return time.perf_counter() - t0

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student-size", type=int, default=64)
    p.add_argument("--teacher-sizes", type=int, nargs="+", default=[64, 96, 128])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "perf_teacher.json"))
    a = p.parse_args()
    torch.manual_seed(0)
    x = torch.randn(a.batch_size, 3, 32, 32)
    y = torch.randint(0, a.classes, (a.batch_size,))
    runners = {}
    student_ce = Step(TrainConfig(method="ce"), a.classes)
    runners["student_ce_step"] = make_runner(student_ce, lite0(a.classes, a.student_size).train(), x, y, False)
    for size in a.teacher_sizes:
        teacher = lite0(a.classes, size).eval()
        for fmt in ("contiguous", "channels_last"):
            t = teacher.to(memory_format=torch.channels_last) if fmt == "channels_last" else teacher
            runners[f"teacher{size}_forward_2x_batch_{fmt}"] = teacher_forward_runner(t, x)
        for method in ("kd", "ad"):
            cfg = TrainConfig(method=method, mix="cutmix", teacher="t")
            for mixed in (False, True):
                name = f"{method}_teacher{size}_{'mixed' if mixed else 'ordinary'}_step"
                runners[name] = make_runner(Step(cfg, a.classes, teacher), lite0(a.classes, a.student_size).train(),
                                            x, y, mixed)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for i in range(1 + a.repeats):
        for name, run in runners.items():
            t = run()
            if i >= 1:
                times[name].append(t)
    res = {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)} for k, v in times.items()}
    ce = res["student_ce_step"]["median_s"]
    summary = {}
    for size in a.teacher_sizes:
        ad = 0.5 * (res[f"ad_teacher{size}_ordinary_step"]["median_s"] + res[f"ad_teacher{size}_mixed_step"]["median_s"])
        teach = min(res[f"teacher{size}_forward_2x_batch_{f}"]["median_s"] for f in ("contiguous", "channels_last"))
        summary[f"teacher{size}"] = {"ad_average_step_over_ce": ad / ce,
                                     "teacher_share_of_ad_mixed_step": teach / res[f"ad_teacher{size}_mixed_step"]["median_s"]}
    out = {"args": vars(a), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "results": res, "summary": summary}
    Path(a.out).write_text(json.dumps(out, indent=2))
    for k, v in res.items():
        print(f"{k:44s} {v['median_s'] * 1e3:8.0f} ms  [{v['min_s'] * 1e3:.0f}..{v['max_s'] * 1e3:.0f}]")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
