"""A model's card: what a user needs to judge it, taken from its manifest (classes, alpha, AUROC, FRR).

One function for /v1/model, the demo page and the Python API (``osr.serve.api.Model.card``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TRAINING_KEYS = ("dataset", "split", "method", "mix", "seed", "epoch", "run_id")


def model_card(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The card as plain data (the shape of serve/routes/schemas.py ``ModelCard``)."""
    threshold = manifest["threshold"]
    per_class = threshold.get("per_class") is not None
    metrics = manifest.get("metrics") or {}
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
    provenance = manifest.get("provenance") or {}
    training = {key: provenance[key] for key in TRAINING_KEYS if key in provenance}
    student = provenance.get("student")
    if isinstance(student, Mapping) and "arch" in student:
        training["architecture"] = student["arch"]
    n_calibration = int(threshold["n_calibration"])
    return {
        "name": str(manifest["name"]),
        "version": int(manifest["version"]),
        "classes": list(manifest["classes"]),
        "image_size": int(manifest["image_size"]),
        "score_function": str(manifest.get("score_function", "max_logit")),
        "alpha": float(threshold["target_false_rejection"]),
        "expected_unknown_rate": None if per_class else int(threshold["rank"]) / (n_calibration + 1),
        "threshold_method": str(threshold.get("method", "split_conformal")),
        "per_class_thresholds": per_class,
        "n_calibration": n_calibration,
        "test": test,
        "training": training,
    }
