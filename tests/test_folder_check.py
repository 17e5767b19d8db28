"""ImageFolder trees are checked before training: layout, class names, test images, decodability,
calibration hold-out size (osr.train.folder_check, called by osr.train.data's loader)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osr.export.conformal import min_calibration_size
from osr.train import folder_check
from osr.train.data import DataError, load_open_set
from osr.train.folder_check import EXPORT_DEFAULT_ALPHA, holdout_size


def make_tree(root: Path, train: dict[str, int], test: dict[str, int], unknown: int = 0) -> Path:
    rng = np.random.default_rng(0)
    for split, counts in (("train", train), ("test", test), ("unknown", {"things": unknown} if unknown else {})):
        for name, count in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return root


def load(root: Path, **kwargs):
    return load_open_set("imagefolder", 0, root, image_size=8, **kwargs)


def test_the_export_default_alpha_and_its_calibration_minimum() -> None:
    from osr.export.cli import build_parser

    assert build_parser().get_default("alpha") == EXPORT_DEFAULT_ALPHA
    assert min_calibration_size(EXPORT_DEFAULT_ALPHA) == 19  # ceil((1 - alpha) / alpha)
    for alpha in (0.5, 0.3, 0.2, 0.1, 0.07, 0.05, 0.03, 0.01, 0.005):  # the train-side copy of export's rule
        assert folder_check.min_calibration_size(alpha) == min_calibration_size(alpha)


def test_missing_test_folder_is_an_error_before_anything_is_decoded(tmp_path: Path) -> None:
    make_tree(tmp_path, {"cats": 3, "dogs": 3}, {})
    (tmp_path / "train" / "cats" / "000.png").write_bytes(b"not decoded: the layout fails first")
    with pytest.raises(DataError, match=r"test missing .*ROOT/test/<class>"):
        load(tmp_path)
    with pytest.raises(DataError, match=r"does not exist"):
        load(tmp_path / "nowhere")


def test_class_names_must_match_across_train_and_test(tmp_path: Path) -> None:
    make_tree(tmp_path, {"cats": 3, "dogs": 3, "owls": 3}, {"Cats": 1, "dogs": 1})
    with pytest.raises(DataError) as error:
        load(tmp_path)
    message = str(error.value)
    assert "class folders in " in message and "but not in" in message and "'Cats'" in message
    assert "without a test folder" in message and "'cats', 'owls'" in message


def test_every_class_needs_training_and_test_images(tmp_path: Path) -> None:
    make_tree(tmp_path, {"cats": 3, "dogs": 0}, {"cats": 0, "dogs": 1})
    with pytest.raises(DataError) as error:
        load(tmp_path)
    assert "no training images" in str(error.value) and "'dogs'" in str(error.value)
    assert "no test images" in str(error.value) and "'cats'" in str(error.value)
    assert "at least one test image per class" in str(error.value)


def test_a_corrupt_image_is_named_or_skipped_with_the_flag(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_tree(tmp_path, {"cats": 12, "dogs": 12}, {"cats": 2, "dogs": 2}, unknown=2)
    bad = tmp_path / "train" / "dogs" / "005.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / "unknown" / "things" / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError) as error:
        load(tmp_path)
    message = str(error.value)
    assert "2 image file(s) do not decode" in message and "--skip-bad-images" in message
    assert f"{bad}: " in message and "empty.jpg: empty file" in message

    with caplog.at_level(logging.WARNING, logger="osr.train"):
        data = load(tmp_path, skip_bad_images=True)
    assert "left out 2 image file(s)" in caplog.text and str(bad) in caplog.text
    assert len(data.train_x) + len(data.calib_x) == 23 and len(data.test_unknown_x) == 2
    # Same files, same hold-out: the export rebuilds exactly the calibration set.
    again = load(tmp_path, skip_bad_images=True)
    assert again.calib_indices.tolist() == data.calib_indices.tolist()


def test_all_test_images_of_a_class_bad_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    make_tree(tmp_path, {"cats": 3, "dogs": 3}, {"cats": 1, "dogs": 1})
    (tmp_path / "test" / "cats" / "000.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"no decodable test images for 'cats'"):
        load(tmp_path, skip_bad_images=True)


def test_calibration_hold_out_too_small_for_the_default_alpha_warns_with_the_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_tree(tmp_path, {"cats": 40, "dogs": 40}, {"cats": 1, "dogs": 1})
    with caplog.at_level(logging.WARNING, logger="osr.train"):
        data = load(tmp_path, calib_fraction=0.1)
    assert len(data.calib_x) == 8
    assert "the calibration hold-out has 8 image(s)" in caplog.text and "needs at least 19" in caplog.text
    # 0.24 of 40 rounds to 10 per class: the smallest fraction that holds out 19 or more
    assert holdout_size([40, 40], 0.24) >= 19 > holdout_size([40, 40], 0.23)
    assert "--calib-fraction 0.24" in caplog.text and "--alpha 0.12 or larger" in caplog.text
    assert min_calibration_size(0.12) <= 8 < min_calibration_size(0.11)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="osr.train"):
        data = load(tmp_path, calib_fraction=0.24)
    assert len(data.calib_x) == 20 and caplog.text == ""


def test_a_class_whose_images_are_all_held_out_is_an_error(tmp_path: Path) -> None:
    make_tree(tmp_path, {"cats": 1, "dogs": 30}, {"cats": 1, "dogs": 1})
    with pytest.raises(DataError, match=r"holds out every training image of 'cats'"):
        load(tmp_path)


def test_stray_files_and_hidden_folders_are_ignored_with_a_note(tmp_path: Path, caplog) -> None:
    make_tree(tmp_path, {"cats": 3, "dogs": 3, ".ipynb_checkpoints": 1}, {"cats": 1, "dogs": 1})
    (tmp_path / "train" / "notes.txt").write_text("hi")
    (tmp_path / "train" / "cats" / "labels.csv").write_text("a,b")
    with caplog.at_level(logging.WARNING, logger="osr.train"):
        data = load(tmp_path, calib_fraction=0.0)
    assert data.classes == ["cats", "dogs"]
    assert "outside the class folders" in caplog.text and "without an image extension" in caplog.text


def test_osr_train_reports_a_bad_folder_before_training(tmp_path: Path, capsys) -> None:
    from osr.train.cli import main

    make_tree(tmp_path / "data", {"cats": 3, "dogs": 3}, {})
    code = main(["--dataset", "imagefolder", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "run")])
    assert code == 1
    assert "osr-train: error: ImageFolder data:" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_skip_bad_images_flag_reaches_the_loader_and_the_export(tmp_path: Path) -> None:
    from osr.train.config import TrainConfig, config_from_args
    from osr.train.data import open_set_from_config

    cfg = config_from_args(["--dataset", "imagefolder", "--skip-bad-images"])
    assert cfg.skip_bad_images is True and TrainConfig().skip_bad_images is False
    assert TrainConfig().digest() == TrainConfig(skip_bad_images=False).digest() != TrainConfig(skip_bad_images=True).digest()
    make_tree(tmp_path, {"cats": 4, "dogs": 4}, {"cats": 1, "dogs": 1})
    (tmp_path / "train" / "cats" / "001.png").write_bytes(b"junk")
    config = {**cfg.to_dict(), "data_root": str(tmp_path), "image_size": 8}
    assert len(open_set_from_config(config).calib_x) + len(open_set_from_config(config).train_x) == 7
    with pytest.raises(DataError, match="001.png"):
        open_set_from_config({**config, "skip_bad_images": False})
