"""osr-score says which model it scores with (and loudly when it is the bundled one or when the input's
class folders are not the model's classes), and --summary's ALARM is exit status 4."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from osr.serve.predictor import MODEL_REPOSITORY_ENV
from osr.serve.score_cli import EXIT_ALARM, main, model_notes

ROOT = Path(__file__).resolve().parents[1]
SHIP = str(ROOT / "samples" / "ship.jpg")  # unknown to the bundled model (README: p-value 0.029)


def _images(folder: Path, count: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")


def test_the_summary_names_the_model(tiny_model_repository: Path, tmp_path: Path, capsys) -> None:
    _images(tmp_path / "shots")
    out = tmp_path / "r.jsonl"
    assert main([str(tmp_path / "shots"), "--out", str(out), "--model-repository", str(tiny_model_repository),
                 "--workers", "1", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    named = f"model tiny version 1 from {tiny_model_repository}"
    assert f"osr-score: {named} (3 classes: cat, dog, ship; anything else is unknown)" in err
    assert "osr-score: 2 scored (" in err and f" -> {out} ({named})" in err
    assert "WARNING" not in err


def test_the_bundled_model_is_said_loudly_and_an_alarm_exits_4(tmp_path: Path, capsys, monkeypatch) -> None:
    """Without --model-repository the bundled model scores, with a WARNING naming it; ten ships (a class it
    never saw) are ten unknowns, far above the unknown rate's band for known-class traffic: exit 4."""
    monkeypatch.delenv(MODEL_REPOSITORY_ENV, raising=False)
    out = tmp_path / "ships.jsonl"
    assert main([SHIP] * 10 + ["--out", str(out), "--summary", "--workers", "1", "--threads", "1"]) == EXIT_ALARM == 4
    captured = capsys.readouterr()
    default = (ROOT / "model_repository" / "DEFAULT_MODEL").read_text().strip()
    assert f"osr-score: model {default} version " in captured.err
    assert (f"osr-score: WARNING: no --model-repository and no ${MODEL_REPOSITORY_ENV}: scoring with the BUNDLED "
            f"model {default}, not yours") in captured.err
    assert "unknown rate   10 of 10 = 1.0000" in captured.out and "ALARM: outside the band" in captured.out
    assert f"osr-score: ALARM: this batch is not what {default}'s threshold was calibrated on" in captured.err
    assert all(json.loads(line)["unknown"] for line in out.read_text().splitlines())

    # the same batch without --summary tests nothing: exit 0; named repository: no bundled warning
    assert main([SHIP, "--out", str(tmp_path / "one.jsonl"), "--model-repository", str(ROOT / "model_repository"),
                 "--workers", "1", "--threads", "1"]) == 0
    assert "BUNDLED" not in capsys.readouterr().err


def test_class_folders_that_are_not_the_models_classes_are_warned_about(tmp_path: Path) -> None:
    predictor = SimpleNamespace(name="tiny", version=1, classes=["cat", "dog", "ship"],
                                version_dir=tmp_path / "repo" / "tiny" / "1")

    def notes(folder: Path) -> list[str]:
        args = SimpleNamespace(inputs=[str(folder), f"@{folder}"], model_repository=tmp_path / "repo")
        return model_notes(args, predictor)

    for name in ("bags", "shoes"):
        _images(tmp_path / "mine" / name)
    (tmp_path / "mine" / "empty").mkdir()  # no images directly inside: not a class folder
    lines = notes(tmp_path / "mine")
    assert lines[0] == f"osr-score: model tiny version 1 from {tmp_path / 'repo'} (3 classes: cat, dog, ship; " \
                       "anything else is unknown)"
    assert lines[1:] == [f"osr-score: WARNING: {tmp_path / 'mine'} holds class folders (bags, shoes) that tiny was "
                         "not trained on; none of them is one of its classes: is this the model you meant?"]

    _images(tmp_path / "mixed" / "Cat")  # names compare case-insensitively
    _images(tmp_path / "mixed" / "bags")
    assert notes(tmp_path / "mixed")[1].endswith("holds class folders (bags) that tiny was not trained on; their "
                                                 "images can only come out as unknown or as one of its classes")
    for name in ("cat", "dog"):
        _images(tmp_path / "same" / name)
    _images(tmp_path / "one" / "bags")  # a single subfolder is no class layout
    _images(tmp_path / "flat", 3)
    for folder in ("same", "one", "flat"):
        assert len(notes(tmp_path / folder)) == 1, folder
