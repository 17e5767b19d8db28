"""Issue 11, item 3: the lease plan for the paper-scale grid, computed from the epoch times that
bench/gpu_epoch_times.py measured on a lent GPU.

A lease is 15 minutes of device time; the machine's start takes part of it (--start-s), each
command may run 10 minutes at most (--command-s), and a checkpoint does not survive to the next
lease (a fresh machine is bare). So every part is self-contained: one seed of one dataset, the
ResNet-50 CE teacher for E epochs, then the seven students of bench/cpu_grid.sh side by side for
E epochs, all in ``bench/gpu_paper_grid.sh`` (resumable: a second command of the same line
finishes what the first one's time limit cut). Test metrics are computed once, after the last
epoch (``--eval-every E``): an evaluation per epoch would cost the lease as much as training.

The cost model, per dataset, for the GPU option that allows the most epochs:

    part_s = commands x overhead_s + warmup_s + E x (teacher_epoch_s + students_epoch_s)
             + teacher_eval_s + student_eval_s
    students_epoch_s = sum of the seven students' epoch_s / speedup(7)

where speedup(K) = the summed images/s of K runs sharing the GPU over one run's images/s (the
``shared`` measurements, CIFAR-10 AD+CutMix only, applied to every dataset; beyond the largest K
measured, that K's speedup; none measured: 1); the seven students run at once (the printed
lines set SLOTS=7; bench/device_grid.sh's default of 6 would start the seventh late). A student
kind that was not timed takes the time of its kind (CE+Mixup as CE+CutMix, AD r=0 and AD+Mixup
as AD+CutMix); warmup_s is the teacher's plus the slowest student's, student_eval_s the slowest
student's single-run evaluation. An option is planned only when every run of the part was timed
with it: gpu_epoch_times.py compiles the teacher and ResNet-18 CE only, so plans use
batch_augment until the students are timed compiled too. E is the largest whole number with
part_s inside the lease's work time, less --margin; a second command (the same resumable line)
pays overhead_s again, not the epoch its predecessor's time limit cut (the margin covers it).

    python bench/lease_plan.py bench/results/gpu_epoch_times.json [--start-s 240] [--margin 0.15]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

# the seven students of bench/cpu_grid.sh -> the run of gpu_epoch_times.py that times them
STUDENTS = {"ce": "resnet18 ce", "ce-cutmix": "resnet18 ce+cutmix", "ce-mixup": "resnet18 ce+cutmix",
            "kd-cutmix": "resnet18 kd+cutmix", "ad-cutmix": "resnet18 ad+cutmix",
            "ad-cutmix-r0": "resnet18 ad+cutmix", "ad-mixup": "resnet18 ad+cutmix"}
TEACHER = "resnet50 teacher ce"
# the options of gpu_epoch_times.py a lease can run -> the flags added to gpu_paper_grid.sh's line:
# bench/device_grid.sh always passes --batch-augment, and bf16 and channels_last are osr-train's
# defaults on CUDA, so the earlier options are measured to show their gain, not run
OPTION_FLAGS = {"batch_augment": [], "compile": ["--compile"]}


def speedup(shared: list[dict], single_ips: float | None, k: int) -> float:
    """Summed throughput of k runs sharing the GPU over one run's; capped at the largest k measured."""
    measured = {s["procs"]: s["images_per_second_total"] for s in shared}
    usable = [p for p in measured if p <= k]
    if not single_ips or not usable:
        return 1.0
    return max(1.0, measured[max(usable)] / single_ips)


def part_for(cases: list[dict], shared: list[dict], dataset: str, option: str, a: argparse.Namespace) -> dict | None:
    """The largest E of one part (teacher + seven students, one seed) for one option, or None when
    that option was not timed for every run the part needs."""
    by_run = {c["run"]: c for c in cases if c["dataset"] == dataset and c["option"] == option}
    if TEACHER not in by_run or any(run not in by_run for run in STUDENTS.values()):
        return None
    teacher = by_run[TEACHER]
    single = next((c["images_per_second"] for c in cases if c["dataset"] == "cifar10"
                   and c["run"] == "resnet18 ad+cutmix" and c["option"] == "batch_augment"), None)
    gain = speedup(shared, single, len(STUDENTS))
    students_epoch_s = sum(by_run[run]["epoch_s"] for run in STUDENTS.values()) / gain
    per_epoch_s = teacher["epoch_s"] + students_epoch_s
    warmup_s = teacher.get("warmup_s", 0) + max(by_run[run].get("warmup_s", 0) for run in STUDENTS.values())
    fixed_1 = a.overhead_s + warmup_s + teacher["eval_s"] + max(by_run[r]["eval_s"] for r in STUDENTS.values())
    work_s = (a.lease_s - a.start_s) * (1 - a.margin)
    best = {"commands": 0, "epochs": 0}
    for commands in (1, 2):  # a second command (the same resumable line) costs its own start-up
        fixed = fixed_1 + (commands - 1) * a.overhead_s
        limit = min(work_s, commands * a.command_s * (1 - a.margin))
        epochs = math.floor((limit - fixed) / per_epoch_s + 1e-9) if limit > fixed else 0  # exact fits count
        if epochs > best["epochs"]:
            best = {"commands": commands, "epochs": epochs}
    part_s = fixed_1 + (best["commands"] - 1) * a.overhead_s + best["epochs"] * per_epoch_s
    return {"dataset": dataset, "option": option, **best, "teacher_epoch_s": teacher["epoch_s"],
            "students_epoch_s": round(students_epoch_s, 2), "speedup": round(gain, 2),
            "part_s": round(part_s) if best["epochs"] else None}


def plan(report: dict, a: argparse.Namespace) -> list[dict]:
    """Per dataset, the option that allows the most epochs per lease, and its part."""
    out = []
    for dataset in dict.fromkeys(c["dataset"] for c in report["cases"]):
        parts = [p for o in OPTION_FLAGS if (p := part_for(report["cases"], report.get("shared", []), dataset, o, a))]
        if parts:
            out.append(max(parts, key=lambda p: p["epochs"]))
    return out


def leases_needed(part: dict, epochs: int) -> str:
    """Whether a schedule of ``epochs`` epochs fits one lease (a checkpoint does not carry over)."""
    if part["epochs"] >= epochs:
        return f"{epochs} epochs fit one lease"
    return f"{epochs} epochs do not fit one lease ({part['epochs']} do)"


def markdown(parts: list[dict], seeds: str, target_epochs: list[int]) -> str:
    lines = ["| dataset | GPU options (cumulative) | teacher s/epoch | 7 students side by side, s/epoch (speedup) | epochs per lease | commands | part (s) |",
             "|---|---|---|---|---|---|---|"]
    for p in parts:
        lines.append(f"| {p['dataset']} | {p['option']} | {p['teacher_epoch_s']:.1f} | {p['students_epoch_s']:.1f} "
                     f"({p['speedup']:.2f}x) | {p['epochs']} | {p['commands']} | {p['part_s'] or '-'} |")
    lines.append("")
    for p in parts:
        if not p["epochs"]:
            lines.append(f"- {p['dataset']}: not even one epoch of a whole part fits a lease.")
            continue
        flags = " ".join(OPTION_FLAGS[p["option"]] + ["--eval-every", str(p["epochs"])])
        for seed in seeds.split():
            lines.append(f"- lease: `SLOTS=7 bench/gpu_paper_grid.sh .carry \"$OUT/results\" {p['epochs']} \"{seed}\" "
                         f"{p['dataset']} {flags}` (x{p['commands']} command{'s' if p['commands'] > 1 else ''})")
        lines.append("  " + "; ".join(leases_needed(p, e) for e in target_epochs))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("times", type=Path, help="the JSON bench/gpu_epoch_times.py wrote")
    ap.add_argument("--lease-s", type=float, default=900, help="device time of a lease")
    ap.add_argument("--start-s", type=float, default=240, help="of it, the machine's start")
    ap.add_argument("--command-s", type=float, default=600, help="the most one command may run")
    ap.add_argument("--overhead-s", type=float, default=60, help="per command: imports, CUDA start, data loading")
    ap.add_argument("--margin", type=float, default=0.15, help="fraction of each limit left unused")
    ap.add_argument("--seeds", default="0", help="seeds to print lease commands for")
    ap.add_argument("--json", action="store_true", help="print the parts as JSON")
    a = ap.parse_args()
    report = json.loads(a.times.read_text())
    parts = plan(report, a)
    if a.json:
        print(json.dumps(parts, indent=1))
        return
    print(f"device: {report.get('device')}; lease {a.lease_s:.0f} s, start {a.start_s:.0f} s, "
          f"commands <= {a.command_s:.0f} s, margin {a.margin:.0%}\n")
    print(markdown(parts, a.seeds, [100, 200]))


if __name__ == "__main__":
    main()
