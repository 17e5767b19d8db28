"""A model's card: what a user needs to judge it, taken from its manifest (classes, alpha, AUROC, FRR).

One function for /v1/model, the demo page and the Python API (``osr.serve.api.Model.card``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from osr.export.manifest import ManifestRecord

TRAINING_KEYS = ("dataset", "split", "method", "mix", "seed", "epoch", "run_id")


def model_card(manifest: ManifestRecord | Mapping[str, Any]) -> dict[str, Any]:
    """The card as plain data (the shape of serve/routes/schemas.py ``ModelCard``), from the
    manifest's record (``Predictor.record``; a manifest dict is parsed into one)."""
    record = ManifestRecord.from_manifest(manifest)
    threshold = record.threshold
    metrics = record.metrics
    false_rejection = metrics.get("false_rejection") or {}
    test = None
    if metrics:
        test = {
            "accuracy": metrics.get("accuracy"),
            "auroc": metrics.get("auroc"),
            "false_rejection_rate": false_rejection.get("false_rejection_rate"),
            "unknown_rejected_rate": metrics.get("unknown_rejected_rate"),
            "oscr": metrics.get("oscr"),
            "n_known_test": metrics.get("n_known_test"),
            "n_unknown_test": metrics.get("n_unknown_test"),
        }
    provenance = record.provenance
    training = {key: provenance[key] for key in TRAINING_KEYS if key in provenance}
    student = provenance.get("student")
    if isinstance(student, Mapping) and "arch" in student:
        training["architecture"] = student["arch"]
    return {
        "name": record.name,
        "version": record.version,
        "classes": list(record.classes),
        "image_size": record.image_size,
        "score_function": record.score_function,
        "alpha": threshold.target_false_rejection,
        "expected_unknown_rate": threshold.expected_unknown_rate,
        "threshold_method": threshold.method,
        "per_class_thresholds": threshold.per_class_thresholds,
        "n_calibration": threshold.n_calibration,
        "test": test,
        "training": training,
    }
