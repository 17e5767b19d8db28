"""bench/lease_plan.py: the epochs per lease from hand-built epoch times, worked out by hand."""

import argparse
import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("lease_plan", Path(__file__).parents[1] / "bench" / "lease_plan.py")
lease_plan = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(lease_plan)

LIMITS = argparse.Namespace(lease_s=900, start_s=240, command_s=600, overhead_s=60, margin=0.15)


def case(run: str, epoch_s: float, eval_s: float, option: str = "batch_augment", ips: float = 0.0,
         warmup_s: float = 0.0) -> dict:
    return {"dataset": "cifar10", "run": run, "option": option, "epoch_s": epoch_s, "eval_s": eval_s,
            "warmup_s": warmup_s, "images_per_second": ips}


def report(shared: list[dict]) -> dict:
    return {"device": "test", "shared": shared, "cases": [
        case("resnet50 teacher ce", 10, 2, warmup_s=1), case("resnet18 ce", 2, 1), case("resnet18 ce+cutmix", 3, 1),
        case("resnet18 kd+cutmix", 4, 1), case("resnet18 ad+cutmix", 5, 1, ips=1000),
        case("resnet50 teacher ce", 1, 2, option="compile")]}  # compile not timed for every student: not a plan


def test_epochs_per_lease_known_answer() -> None:
    # speedup(7) = 3000 / 1000 (the 4-run measurement, the largest <= 7); students per epoch
    # (2 + 3 + 3 + 4 + 5 + 5 + 5) / 3 = 9 s, with the teacher 19 s; fixed 60 + 1 + 2 + 1 = 64 s;
    # one command: min(660, 600) x 0.85 = 510 s -> (510 - 64) // 19 = 23 epochs, 64 + 23 x 19 = 501 s;
    # two commands: 561 s less 124 fixed -> 23 as well, so one command is kept.
    parts = lease_plan.plan(report([{"procs": 2, "images_per_second_total": 1800},
                                    {"procs": 4, "images_per_second_total": 3000}]), LIMITS)
    assert parts == [{"dataset": "cifar10", "option": "batch_augment", "commands": 1, "epochs": 23,
                      "teacher_epoch_s": 10, "students_epoch_s": 9.0, "speedup": 3.0, "part_s": 501}]


def test_without_a_shared_measurement_the_students_run_one_after_another() -> None:
    # students 27 s per epoch, 37 with the teacher: one command (510 - 64) // 37 = 12; two commands
    # (561 - 124) // 37 = 11; so 12 in one command
    (part,) = lease_plan.plan(report([]), LIMITS)
    assert (part["speedup"], part["epochs"], part["commands"], part["part_s"]) == (1.0, 12, 1, 64 + 12 * 37)


def test_a_second_command_is_used_when_it_buys_epochs() -> None:
    # one command may run 300 s only: (255 - 64) // 19 = 10 epochs; two: min(561, 510) - 124 -> 20
    limits = argparse.Namespace(**{**vars(LIMITS), "command_s": 300})
    (part,) = lease_plan.plan(report([{"procs": 4, "images_per_second_total": 3000}]), limits)
    assert (part["epochs"], part["commands"]) == (20, 2)
    text = lease_plan.markdown([part], "0 1", [100])
    assert '`SLOTS=7 bench/gpu_paper_grid.sh .carry "$OUT/results" 20 "1" cifar10 --eval-every 20` (x2 commands)' in text
    assert "100 epochs do not fit one lease (20 do)" in text
