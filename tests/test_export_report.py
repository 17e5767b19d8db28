"""The export report is computed with onnxruntime on the exported file and says what it finds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from osr.export.conformal import ConformalThreshold, binomial_band
from osr.export.graph import onnx_session, run_onnx
from osr.export.report import _false_rejection


def test_report_numbers_match_onnxruntime_on_the_test_images(tiny_model_repository: Path, tiny_export_inputs) -> None:
    version_dir = tiny_model_repository / "tiny" / "1"
    report = json.loads((version_dir / "report" / "report.json").read_text())
    manifest = json.loads((version_dir / "manifest.json").read_text())
    inputs = tiny_export_inputs()  # the same deterministic images the fixture exported with
    session = onnx_session(version_dir / "model.onnx")
    known = run_onnx(session, inputs.test_known_x)
    unknown = run_onnx(session, inputs.test_unknown_x)

    assert report["false_rejection"]["false_rejection_rate"] == np.mean(known["label"] == -1)
    assert report["unknown_rejected_rate"] == np.mean(unknown["label"] == -1)
    assert report["accuracy"] == np.mean(known["logits"].argmax(axis=1) == inputs.test_known_y)
    labels = np.r_[np.ones(len(known["score"])), np.zeros(len(unknown["score"]))]
    assert report["auroc"] == roc_auc_score(labels, np.r_[known["score"], unknown["score"]])
    assert manifest["metrics"]["auroc"] == report["auroc"]
    markdown = (version_dir / "report" / "report.md").read_text()
    assert "realised false-rejection rate" in markdown and "![ROC](roc.png)" in markdown
    for figure in report["figures"]:
        assert (version_dir / "report" / figure).read_bytes()[:4] == b"\x89PNG"


def test_band_verdicts() -> None:
    threshold = ConformalThreshold(value=0.0, target_false_rejection=0.1, method="split_conformal",
                                   n_calibration=199, rank=20)
    low, high = binomial_band(0.1, 400, 0.99)
    logits = np.tile([[1.0, 0.0]], (400, 1))
    for rejected, inside in ((40, True), (int(high * 400) + 5, False), (0, False)):
        label = np.where(np.arange(400) < rejected, -1, 0)
        record = _false_rejection({"label": label, "logits": logits}, np.zeros(400, int), threshold, 2)
        assert record["false_rejection_rate"] == rejected / 400
        assert record["inside_binomial_band"] is inside
        assert record["consistent_with_guarantee"] is (rejected / 400 <= high)
    assert record["binomial_band"] == [low, high] and "conformal_band" in record
    assert record["per_true_class"] == [0.0, None]
