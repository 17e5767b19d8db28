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


def _record(rejected: int, n: int = 400, **threshold_args) -> dict:
    args = dict(value=0.0, target_false_rejection=0.1, method="split_conformal", n_calibration=199, rank=20)
    threshold = ConformalThreshold(**{**args, **threshold_args})
    label = np.where(np.arange(n) < rejected, -1, 0)
    return _false_rejection({"label": label, "logits": np.tile([[1.0, 0.0]], (n, 1))}, np.zeros(n, int), threshold, 2)


def test_one_band_to_read_and_its_console_note() -> None:
    """Split conformal: the band including the calibration draw is the one to read (the binomial band is
    too narrow for a random threshold); PAC: only the binomial band's top; a miss is a note saying why."""
    from osr.export.report import _markdown, band_note

    low, high = binomial_band(0.1, 400, 0.99)
    just_out = int(high * 400) + 2  # outside the binomial band, inside the wider conformal one
    record = _record(just_out)
    assert not record["inside_binomial_band"] and record["inside_conformal_band"]
    assert record["band_to_read"]["name"] == "conformal_band" and record["band_to_read"]["verdict"] == "ok"
    assert band_note(record).startswith(f"false-rejection rate {just_out / 400:.4f} on 400 known test images (alpha "
                                        "0.1): inside the band to read, the 99 % band [")

    above, below = _record(200), _record(0)
    assert band_note(above).startswith("note: false-rejection rate 0.5000 on 400 known test images (alpha 0.1) is "
                                       "ABOVE the band to read, the 99 % band [")
    assert "rejected more often than alpha promises" in band_note(above)
    assert " is BELOW the band to read" in band_note(below) and "not like the calibration images" in band_note(below)

    pac_low = _record(0, confidence=0.9)
    assert pac_low["band_to_read"] == {"name": "binomial_band", "band": [low, high], "level": 0.99, "verdict": "ok",
                                       "what": "the binomial band around alpha (with --confidence only its top counts)"}
    assert _record(200, confidence=0.9)["band_to_read"]["verdict"] == "above"

    metrics = {"computed_with": "onnxruntime", "score_function": "max_logit", "accuracy": 1.0,
               "correct_and_accepted_rate": 0.5, "false_rejection": below,
               "threshold": {"method": "split_conformal", "target_false_rejection": 0.1, "confidence": None,
                             "value": 0.0, "rank": 20, "n_calibration": 199, "per_class": None}}
    text = _markdown(metrics, [])
    assert "**The band to read** is the 99 % band [" in text and "the realised rate 0.0000 is **below it**" in text
