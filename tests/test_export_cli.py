"""osr-export end to end on a tiny ImageFolder dataset and a random-weights checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from osr.export import cli
from osr.export.conformal import threshold_at_rank
from osr.export.graph import onnx_session, run_onnx
from osr.export.manifest import load_manifest, resolve_version_dir
from osr.train.checkpoint import SCHEMA
from osr.train.data import open_set_from_config
from osr.train.models import build_model

CLASSES = ["blue", "green", "red"]
COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def _write_images(folder: Path, colour: tuple[int, int, int], count: int, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        noise = rng.integers(-40, 41, (40, 36, 3))
        pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        _write_images(root / "train" / name, COLOURS[name], 24, rng)
        _write_images(root / "test" / name, COLOURS[name], 6, rng)
    _write_images(root / "unknown" / "grey", (128, 128, 128), 10, rng)
    config = {
        "dataset": "imagefolder", "split": 0, "data_root": str(root), "image_size": 32,
        "calib_fraction": 0.34, "split_seed": 0, "max_train_per_class": None, "max_test_per_class": None,
        "method": "ce", "mix": "none", "seed": 0,
    }
    data = open_set_from_config(config)
    torch.manual_seed(0)
    model = build_model("classifier32", num_classes=3, width=0.125)
    ckpt = {
        "schema": SCHEMA,
        "model": model.state_dict(),
        "model_args": {"arch": "classifier32", "num_classes": 3, "width": 0.125},
        "classes": data.classes,
        "image_size": 32,
        "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "config": config,
        "metrics": {"accuracy": 0.33},
        "calibration_indices": [int(i) for i in data.calib_indices],
        "epoch": 1,
        "run_id": "tiny run/1",
        "git_commit": None,
        "teacher": None,
    }
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    torch.save(ckpt, path)
    return path


def test_cli_exports_fp32_and_int8(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    repository = tmp_path / "repo"
    assert cli.main([str(checkpoint), "--repository", str(repository), "--alpha", "0.1", "--int8"]) == 0
    version_dir = Path(capsys.readouterr().out.strip())
    assert version_dir == repository / "tiny-run-1" / "1"
    assert resolve_version_dir(repository, None, None) == version_dir  # the -int8 variant does not count

    manifest = load_manifest(version_dir)
    assert manifest["classes"] == CLASSES and manifest["image_size"] == 32
    assert manifest["threshold"]["n_calibration"] == 24
    assert manifest["provenance"]["run_id"] == "tiny run/1"
    assert manifest["provenance"]["student"]["arch"] == "classifier32"
    assert manifest["metrics"]["n_known_test"] == 18 and manifest["metrics"]["n_unknown_test"] == 10
    report = json.loads((version_dir / "report" / "report.json").read_text())
    assert report["false_rejection"]["false_rejection_rate"] == manifest["metrics"]["false_rejection"]["false_rejection_rate"]
    assert {"scores.png", "roc.png", "oscr.png", "report.md"} <= {p.name for p in (version_dir / "report").iterdir()}

    # The threshold is the rank-th smallest score of exactly the held-out calibration images.
    data = open_set_from_config(torch.load(checkpoint, weights_only=True)["config"])
    calib = run_onnx(onnx_session(version_dir / "model.onnx"), data.calib_x)
    rank = manifest["threshold"]["rank"]
    assert manifest["threshold"]["value"] == pytest.approx(threshold_at_rank(calib["score"], rank), abs=1e-6)

    int8_dir = repository / "tiny-run-1-int8" / "1"
    int8 = load_manifest(int8_dir)
    assert int8["variant_of"] == "tiny-run-1" and int8["variant"] == "int8"
    assert int8["outputs"] == manifest["outputs"] and int8["parity"]["passed"]
    assert 0.0 <= int8["int8"]["decision_agreement_with_fp32"] <= 1.0
    assert int8["int8"]["images_per_second_int8"] > 0 and int8["int8"]["images_per_second_fp32"] > 0
    assert int8["int8"]["activation_ranges_from"] == "training images"
    report = (int8_dir / "report" / "report.md").read_text()
    assert "## INT8 against fp32" in report and "decisions equal to fp32" in report
    assert json.loads((int8_dir / "report" / "report.json").read_text())["int8"] == int8["int8"]
    int8_calib = run_onnx(onnx_session(int8_dir / "model.onnx"), data.calib_x)
    assert int8["threshold"]["value"] == pytest.approx(threshold_at_rank(int8_calib["score"], rank), abs=1e-6)
    assert int8_calib["label"].tolist() == np.where(
        int8_calib["score"] < int8["threshold"]["value"], -1, int8_calib["logits"].argmax(axis=1)
    ).tolist()

    if (repository / "tiny-run-1" / "config.pbtxt").exists():
        from osr.export.triton_config import render_config

        assert (repository / "tiny-run-1" / "config.pbtxt").read_text() == render_config(manifest, "gpu")
        assert (repository / "tiny-run-1" / "configs" / "cpu.pbtxt").read_text() == render_config(manifest, "cpu")
        assert 'name: "tiny-run-1-int8"' in (repository / "tiny-run-1-int8" / "config.pbtxt").read_text()

    with pytest.raises(SystemExit, match="already exists; pass --force"):
        cli.main([str(checkpoint), "--repository", str(repository), "--version", "1"])


def test_cli_refuses_bad_calibration_and_arguments(checkpoint: Path, tmp_path: Path) -> None:
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["calibration_indices"] = ckpt["calibration_indices"][:-1]
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    with pytest.raises(SystemExit, match="differs from the checkpoint's calibration_indices"):
        cli.main([str(bad), "--repository", str(tmp_path / "repo")])
    with pytest.raises(SystemExit, match="too few calibration images for alpha=0.01: have 24, need at least 99"):
        cli.main([str(checkpoint), "--repository", str(tmp_path / "repo"), "--alpha", "0.01"])
    with pytest.raises(SystemExit, match="checkpoint not found"):
        cli.main([str(tmp_path / "missing.pt"), "--repository", str(tmp_path / "repo")])
    with pytest.raises(SystemExit):
        cli.main([str(checkpoint), "--alpha", "1.5"])
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").rglob("model.onnx"))


def test_default_name_is_a_valid_model_name() -> None:
    assert cli.default_name({"run_id": "cifar10/ad seed=1"}) == "cifar10-ad-seed-1"
    assert cli.default_name({"path": "/runs/abc/checkpoint.pt"}) == "abc"


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_existing_models_are_not_changed_without_force(checkpoint: Path, tmp_path: Path, capsys) -> None:
    repository = tmp_path / "repo"
    base = [str(checkpoint), "--repository", str(repository), "--name", "m", "--no-report", "--alpha", "0.1"]
    assert cli.main(base) == 0
    before = _tree(repository)

    other = torch.load(checkpoint, weights_only=True)
    other["classes"] = ["0", "1", "2"]  # e.g. an MNIST run exported under the same name
    other_path = tmp_path / "other.pt"
    torch.save(other, other_path)
    with pytest.raises(SystemExit, match=r"version 1 differs from this export: classes \[blue, green, red\] \(3\) "
                                         r"-> \[0, 1, 2\] \(3\). Pass --force"):
        cli.main([str(other_path), *base[1:]])
    with pytest.raises(SystemExit, match=r"config.pbtxt exists with other content \(first change: "
                                         r"'max_batch_size: 64' -> 'max_batch_size: 32'.*pass --force"):
        cli.main([*base, "--max-batch-size", "32"])
    assert _tree(repository) == before  # refused before any work: byte-identical

    # A compatible version 2 keeps the model's configs as they are (their content is unchanged).
    assert cli.main(base) == 0
    assert Path(capsys.readouterr().out.split()[-1]) == repository / "m" / "2"
    assert (repository / "m" / "config.pbtxt").read_bytes() == before["m/config.pbtxt"]
    assert (repository / "m" / "configs" / "cpu.pbtxt").read_bytes() == before["m/configs/cpu.pbtxt"]

    assert cli.main([*base, "--max-batch-size", "32", "--force"]) == 0
    assert "max_batch_size: 32" in (repository / "m" / "config.pbtxt").read_text()


def test_help_shows_the_defaults() -> None:
    text = " ".join(cli.build_parser().format_help().split())
    assert "default: ./exports, ignored by git" in text and "default: max_logit" in text
    assert cli.build_parser().get_default("repository") == Path("exports")


def test_a_false_rejection_rate_outside_the_band_to_read_is_a_console_note(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    """After the export, the realised false-rejection rate is said against the one band to read (the report's
    band_to_read); outside it, a warning-level note says so. The version folder stays the only stdout."""
    import logging

    from osr.export.conformal import ConformalThreshold
    from osr.export.report import _false_rejection

    threshold = ConformalThreshold(value=0.0, target_false_rejection=0.05, method="split_conformal",
                                   n_calibration=299, rank=15)
    version_dir = tmp_path / "exports" / "m" / "1"
    (version_dir / "report").mkdir(parents=True)

    def fake_run(rejected: int):
        label = np.where(np.arange(1000) < rejected, -1, 0)
        record = _false_rejection({"label": label, "logits": np.tile([[1.0, 0.0]], (1000, 1))}, np.zeros(1000, int),
                                  threshold, 2)
        (version_dir / "report" / "report.json").write_text(json.dumps({"false_rejection": record}))
        return lambda args: version_dir

    for rejected, level, words in ((50, logging.INFO, ": inside the band to read, the 99 % band ["),
                                   (5, logging.WARNING, " is BELOW the band to read, the 99 % band ["),
                                   (200, logging.WARNING, " is ABOVE the band to read, the 99 % band [")):
        monkeypatch.setattr(cli, "run", fake_run(rejected))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="osr"):
            assert cli.main([str(tmp_path / "run"), "--repository", str(tmp_path / "exports"), "--name", "m"]) == 0
        notes = [r for r in caplog.records if "false-rejection rate" in r.getMessage()]
        assert len(notes) == 1 and notes[0].levelno == level and words in notes[0].getMessage()
        assert notes[0].getMessage().startswith("note: " if level == logging.WARNING else "false-rejection rate")
        assert notes[0].getMessage().endswith(f"({version_dir / 'report' / 'report.md'})")
        assert capsys.readouterr().out == f"{version_dir}\n"
