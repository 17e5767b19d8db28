"""A newcomer's image-folder run, end to end: 28 px images trained at the default 32 px (said on the
console), a readable end summary, and an export whose report rebuilds the run with the line it prints."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from osr.train.checkpoint import load_checkpoint
from osr.train.cli import main as train_main
from osr.train.config import config_from_args
from osr.train.folder_check import resize_note

COLOURS = {"blue": (40, 40, 200), "green": (40, 200, 40), "red": (200, 40, 40)}


def _images(folder: Path, colour: tuple[int, int, int], count: int, rng: np.random.Generator,
            size: tuple[int, int] = (28, 28)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        noise = rng.integers(-40, 41, (size[1], size[0], 3))
        Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")


def _train(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = train_main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("my data")  # a space: the rebuild line must quote it
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        _images(root / "train" / name, colour, 24, rng)
        _images(root / "test" / name, colour, 4, rng)
    _images(root / "unknown" / "grey", (128, 128, 128), 6, rng)
    run = tmp_path_factory.mktemp("runs") / "my-classes"
    argv = ["--dataset", "imagefolder", "--data-root", str(root), "--arch", "classifier32", "--width", "0.125",
            "--batch-size", "16", "--epochs", "1", "--calib-fraction", "0.34", "--device", "cpu", "--out", str(run)]
    code, stdout = _train(argv)
    assert code == 0, stdout
    return {"root": root, "run": run, "stdout": stdout}


def test_the_resize_to_the_default_image_size_is_said_at_training_time(folder_run: dict) -> None:
    notes = [line for line in folder_run["stdout"].splitlines() if line.startswith("osr-train: note:")]
    assert len(notes) == 1
    assert (f"the training images in {folder_run['root'] / 'train'} are 28x28 px and are resized to 32x32 px "
            "(--image-size 32, the default for image folders;") in notes[0]
    assert notes[0].endswith("pass --image-size 28 to train at their own size")


def test_resize_note_is_silent_at_the_images_own_size_and_counts_mixed_sizes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    _images(tmp_path / "train" / "a", (10, 10, 10), 3, rng)
    _images(tmp_path / "train" / "b", (90, 90, 90), 1, rng, size=(40, 30))
    assert resize_note(tmp_path / "nowhere", 28) is None
    note = resize_note(tmp_path, 28, given=28, input_size=96)
    assert "come in 2 sizes (most often 28x28 px: 3 of 4) and are resized to 28x28 px (--image-size 28;" in note
    assert note.endswith("then to 96 px inside the network (--input-size)")
    (tmp_path / "train" / "b" / "000.png").unlink()
    assert resize_note(tmp_path, 28) is None


def test_the_run_ends_with_a_readable_summary_and_the_next_command(folder_run: dict) -> None:
    stdout, run = folder_run["stdout"], folder_run["run"]
    epochs = [line for line in stdout.splitlines() if line.startswith("epoch 1/1: loss ")]
    assert len(epochs) == 1 and "; test: accuracy " in epochs[0] and ", AUROC " in epochs[0]
    tail = stdout[stdout.index("osr-train: done in "):].splitlines()
    assert tail[0].endswith(" (1 epoch).")
    assert re.fullmatch(r"  test: \d+\.\d % of the 12 known test images classified correctly; known vs unknown "
                        r"AUROC \d\.\d{3} over 6 unknown images \(max_logit score; 0\.5 is chance, 1\.0 perfect\)",
                        tail[1]), tail[1]
    assert tail[2].startswith(f"  checkpoint: {run / 'checkpoint.pt'} ")
    assert tail[3].startswith(f"  next: osr-export {run} --name my-classes ")
    assert "{" not in stdout  # no raw dict


def test_the_report_rebuild_command_reruns_as_written(folder_run: dict, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    from osr.export import cli as export_cli

    with caplog.at_level(logging.INFO, logger="osr"):
        assert export_cli.main([str(folder_run["run"]), "--repository", str(tmp_path / "exports"),
                                "--name", "my-classes", "--alpha", "0.05"]) == 0
    console = [record.getMessage() for record in caplog.records]
    band = [line for line in console if "the band to read, the 99 % band [" in line]
    assert len(band) == 1, console  # the realised false-rejection rate against one band, on the console

    report = (tmp_path / "exports" / "my-classes" / "1" / "report" / "report.md").read_text()
    trained = report[report.index("## How it was trained"):]
    assert f"every training image of the image folders in `{folder_run['root']}`" in trained
    line = re.search(r"```bash\n(osr-train .*)\n```", trained).group(1)
    words = shlex.split(line)
    assert words[words.index("--data-root") + 1] == str(folder_run["root"])

    ckpt = load_checkpoint(folder_run["run"])
    again = config_from_args(words[1:])
    assert again.data_root == ckpt["config"]["data_root"] and again.out == ckpt["config"]["out"]
    assert again.digest() == ckpt["config_digest"]

    # and it reruns: the same line (into another folder) trains the same model
    code, stdout = _train([*words[1:], "--out", str(tmp_path / "again"), "--device", "cpu"])
    assert code == 0, stdout
    rerun = load_checkpoint(tmp_path / "again")
    assert all(torch.equal(value, rerun["model"][key]) for key, value in ckpt["model"].items())
