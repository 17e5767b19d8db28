"""End-to-end training on the committed CIFAR-10 fixture: teacher, AD student, resume, DDP, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from osr.train.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from osr.train.cli import main
from osr.train.config import TrainConfig
from osr.train.trainer import NonFiniteLossError, Trainer

FIXTURE = Path(__file__).parent / "fixtures" / "data"
TINY = ["--dataset", "cifar10", "--split", "0", "--data-root", str(FIXTURE), "--arch", "classifier32",
        "--width", "0.125", "--batch-size", "32", "--epochs", "2", "--device", "cpu"]


def tiny_config(out, **kw) -> TrainConfig:
    base = dict(dataset="cifar10", split=0, data_root=str(FIXTURE), arch="classifier32", width=0.125,
                batch_size=32, epochs=2, device="cpu", out=str(out))
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "teacher"
    assert main([*TINY, "--out", str(out)]) == 0
    return out


def test_teacher_run_writes_the_contract(teacher):
    ckpt = torch.load(teacher / "checkpoint.pt", weights_only=True)  # plain data only
    for key in ("model", "model_args", "classes", "image_size", "normalize", "config", "metrics",
                "calibration_indices", "epoch", "optimizer", "scheduler"):
        assert key in ckpt
    assert ckpt["epoch"] == 2 and ckpt["image_size"] == 32 and len(ckpt["calibration_indices"]) == 24
    assert ckpt["model_args"] == {"arch": "classifier32", "num_classes": 6, "width": 0.125}
    log = [json.loads(line) for line in (teacher / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]
    m = json.loads((teacher / "metrics.json").read_text())["metrics"]
    for key in ("accuracy", "auroc", "oscr", "fpr_at_95tpr", "aupr", "mean_max_logit_known", "mean_max_logit_unknown",
                "auroc_msp", "auroc_energy"):
        assert key in m


def test_checkpoint_round_trip_gives_same_logits(teacher):
    ckpt = load_checkpoint(teacher)
    model = model_from_checkpoint(ckpt)
    x = torch.randn(4, 3, 32, 32)
    again = model_from_checkpoint(load_checkpoint(teacher / "checkpoint.pt"))
    assert torch.equal(model(x), again(x))


def test_ad_student_end_to_end(teacher, tmp_path):
    out = tmp_path / "ad"
    assert main([*TINY, "--method", "ad", "--teacher", str(teacher), "--out", str(out), "--p-mix", "1.0"]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt["teacher"]["path"] == str(teacher) and ckpt["config"]["mix"] == "cutmix"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(e["mixed_steps"] == e["steps"] for e in log)


@pytest.mark.parametrize("method,mix", [("ce", "mixup"), ("ce", "cutmix"), ("kd", "cutmix"), ("ad", "mixup")])
def test_every_method_runs_one_epoch(teacher, tmp_path, method, mix):
    cfg = tiny_config(tmp_path / method, method=method, mix=mix, epochs=1, p_mix=1.0,
                      teacher=str(teacher) if method != "ce" else None)
    metrics = Trainer(cfg, progress=False).fit()
    assert 0.0 <= metrics["auroc"] <= 1.0


def test_teacher_of_another_split_is_refused(teacher, tmp_path):
    cfg = tiny_config(tmp_path / "s", split=1, method="ad", teacher=str(teacher))
    with pytest.raises(CheckpointError, match="does not match this run: classes"):
        Trainer(cfg, progress=False)


def test_resume_equals_uninterrupted_run(tmp_path):
    straight = Trainer(tiny_config(tmp_path / "a", mix="cutmix"), progress=False)
    straight.fit()
    crashed = Trainer(tiny_config(tmp_path / "b", mix="cutmix"), progress=False)
    crashed.fit(stop_after=1)
    assert load_checkpoint(tmp_path / "b")["epoch"] == 1
    resumed = Trainer(tiny_config(tmp_path / "b", mix="cutmix", resume=True), progress=False)
    assert resumed.epoch == 1
    resumed.fit()
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert straight.metrics == resumed.metrics


def test_compile_wraps_the_training_passes_only_and_keeps_runs_resumable(teacher, tmp_path):
    """--compile compiles what the steps call (student and teacher); checkpoints and evaluation keep
    the plain module (no _orig_mod. keys), and the flag does not change the config digest. A whole
    compiled run is not run here: inductor takes about 90 s to compile even this tiny model on the CPU."""
    plain = tiny_config(tmp_path / "p", method="ad", teacher=str(teacher))
    compiled = tiny_config(tmp_path / "c", method="ad", teacher=str(teacher), compile=True)
    assert plain.digest() == compiled.digest()
    t = Trainer(compiled, progress=False)
    assert isinstance(t.net, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(t.step.teacher, torch._dynamo.eval_frame.OptimizedModule)
    assert not isinstance(t.model, torch._dynamo.eval_frame.OptimizedModule)
    assert not any("_orig_mod" in k for k in t._checkpoint()["model"])


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    t = Trainer(tiny_config(tmp_path / "nan", epochs=3), progress=False)
    t.fit(stop_after=1)
    before = load_checkpoint(tmp_path / "nan")
    t.cfg.lr = float("nan")
    for g in t.opt.param_groups:
        g["lr"] = float("inf")
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        t.fit()
    after = load_checkpoint(tmp_path / "nan")
    assert after["epoch"] == 1
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    assert main(["--data-root", str(tmp_path), "--epochs", "1", "--out", str(tmp_path / "x")]) == 1
    assert "cifar10 data not found" in capsys.readouterr().err
    assert main(["--method", "ad", "--data-root", str(FIXTURE)]) == 2
    assert "needs --teacher" in capsys.readouterr().err


def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "osr.train.cli", *TINY, "--epochs", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1  # written by rank 0 only
    # each process takes half of the global batch of 32: 216 images / 2 ranks / 16 = 6 steps
    assert log[0]["steps"] == 6
    assert load_checkpoint(out)["epoch"] == 1


def test_batch_augment_trains_with_the_same_steps_per_epoch(tmp_path):
    plain = Trainer(tiny_config(tmp_path / "p", epochs=1), progress=False)
    on_device = Trainer(tiny_config(tmp_path / "d", epochs=1, batch_augment=True), progress=False)
    assert on_device.steps_per_epoch == plain.steps_per_epoch == len(plain.loader)
    metrics = on_device.fit()
    assert json.loads((tmp_path / "d" / "log.jsonl").read_text().splitlines()[0])["steps"] == plain.steps_per_epoch
    assert 0.0 <= metrics["auroc"] <= 1.0


def test_test_metrics_after_the_last_epoch_by_default_and_older_runs_resume(tmp_path):
    """By default the test sets are evaluated once, after the last epoch (metrics.json is complete then);
    a run checkpointed by an older osr-train (evaluating every epoch, or every --eval-every N with N in
    its digest) resumes under the new default."""
    from osr.train.checkpoint import atomic_torch_save

    Trainer(tiny_config(tmp_path / "new"), progress=False).fit()
    log = [json.loads(line) for line in (tmp_path / "new" / "log.jsonl").read_text().splitlines()]
    assert ["test" in e for e in log] == [False, True]
    assert json.loads((tmp_path / "new" / "metrics.json").read_text())["metrics"] == log[-1]["test"]

    for every in (1, 3):
        out = tmp_path / f"old{every}"
        crashed = Trainer(tiny_config(out, eval_every=every), progress=False)
        crashed.fit(stop_after=1)
        ckpt = load_checkpoint(out)
        ckpt["config_digest"] = crashed.cfg.digest(eval_every=every)  # what an older osr-train wrote
        ckpt["run_id"] = f"old{every}-from-before"
        ckpt.pop("path", None)
        atomic_torch_save(ckpt, out / "checkpoint.pt")
        resumed = Trainer(tiny_config(out, resume=True), progress=False)
        assert resumed.epoch == 1 and resumed.run_id == f"old{every}-from-before"
        assert "auroc" in resumed.fit()
    with pytest.raises(CheckpointError, match="another config"):
        Trainer(tiny_config(tmp_path / "old3", resume=True, epochs=3, seed=1), progress=False)
