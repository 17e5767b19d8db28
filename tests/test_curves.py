"""runs/<run>/curves.png from log.jsonl (osr.train.curves), and the trainer writing it every epoch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osr.train import curves

FIXTURE = Path(__file__).parent / "fixtures" / "data"


def write_log(run: Path, lines: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


LOG = [
    {"epoch": 1, "train_loss": 2.0},
    {"epoch": 2, "train_loss": 1.5, "test": {"accuracy": 0.5, "auroc": 0.6, "oscr": 0.4}},
    {"epoch": 3, "train_loss": 9.9},  # replaced below: the last line of an epoch wins
    {"epoch": 3, "train_loss": 1.2, "test": {"accuracy": 0.7, "auroc": 0.65, "oscr": 0.5}},
]


def test_curves_png_from_a_tiny_log(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_log(run, LOG)
    entries = curves.read_log(run / "log.jsonl")
    assert [e["epoch"] for e in entries] == [1, 2, 3]
    assert curves._series(entries, "train_loss") == ([1, 2, 3], [2.0, 1.5, 1.2])
    assert curves._series(entries, "test", "auroc") == ([2, 3], [0.6, 0.65])  # evaluated epochs only

    path = curves.write_curves(run)
    assert path == run / "curves.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1200, 360)
        colours = np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)
        assert len(colours) > 10  # something was drawn
    assert sorted(p.name for p in run.iterdir()) == ["curves.png", "log.jsonl"]  # no temporary left


def test_without_matplotlib_or_with_a_broken_log_it_notes_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    write_log(run, LOG)
    monkeypatch.setattr(curves, "_noted", False)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    assert curves.write_curves(run) is None
    assert curves.write_curves(run) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "osr-train: note: no " in err and "matplotlib is not installed" in err
    assert not (run / "curves.png").exists()

    monkeypatch.setattr(curves, "_noted", False)
    (run / "log.jsonl").write_text("{not json\n")
    assert curves.write_curves(run) is None
    assert "JSONDecodeError" in capsys.readouterr().err


def test_the_trainer_writes_curves_every_epoch(tmp_path: Path) -> None:
    from osr.train.config import TrainConfig
    from osr.train.trainer import Trainer

    cfg = TrainConfig(dataset="cifar10", data_root=str(FIXTURE), arch="classifier32", width=0.125, batch_size=32,
                      epochs=1, device="cpu", max_train_per_class=6, max_test_per_class=2, randaugment=False,
                      out=str(tmp_path / "run"))
    Trainer(cfg, progress=False).fit()
    assert (tmp_path / "run" / "curves.png").is_file()


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_log(tmp_path / "a", LOG)
    assert curves.main([str(tmp_path / "a")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "a" / "curves.png")
    assert curves.main([str(tmp_path / "missing")]) == 1
    assert curves.main([]) == 2
