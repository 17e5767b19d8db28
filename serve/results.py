"""Result rows (one per image), shared by osr-serve's /v1/classify and osr-score's output lines.

Row schema (contract): path, status ("ok"|"error"), error, class_index (-1 = unknown), class_name
("unknown" when -1), score, p_value, unknown, top_k [{class_index, class_name, logit}].
Error rows carry the message in ``error`` and null prediction fields (class_index, class_name, score,
p_value, unknown are None; top_k is empty), so no consumer mistakes a failed file for a prediction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

UNKNOWN_NAME = "unknown"
ROW_FIELDS: tuple[str, ...] = (
    "path", "status", "error", "class_index", "class_name", "score", "p_value", "unknown", "top_k",
)


def error_row(path: str, message: str) -> dict:
    return {
        "path": path, "status": "error", "error": message,
        "class_index": None, "class_name": None, "score": None, "p_value": None, "unknown": None,
        "top_k": [],
    }


def rows_from_outputs(
    outputs: Mapping[str, np.ndarray], paths: Sequence[str], classes: Sequence[str], top_k: int = 5
) -> list[dict]:
    """Turn the graph outputs of one batch (logits [N,K], score [N], label [N], p_value [N]) into rows."""
    logits = np.asarray(outputs["logits"], dtype=np.float32)
    scores = np.asarray(outputs["score"], dtype=np.float32).reshape(-1)
    labels = np.asarray(outputs["label"]).astype(np.int64).reshape(-1)
    p_values = np.asarray(outputs["p_value"], dtype=np.float32).reshape(-1)
    if not (len(paths) == logits.shape[0] == scores.shape[0] == labels.shape[0] == p_values.shape[0]):
        raise ValueError(
            f"batch size mismatch: {len(paths)} paths, logits {logits.shape}, score {scores.shape}, "
            f"label {labels.shape}, p_value {p_values.shape}"
        )
    k = max(0, min(int(top_k), logits.shape[1]))
    # stable sort on the negated logits: ties keep the lower class index first, like argmax
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    rows = []
    for i, path in enumerate(paths):
        label = int(labels[i])
        rows.append({
            "path": path, "status": "ok", "error": None,
            "class_index": label,
            "class_name": UNKNOWN_NAME if label < 0 else classes[label],
            "score": float(scores[i]),
            "p_value": float(p_values[i]),
            "unknown": label < 0,
            "top_k": [
                {"class_index": int(c), "class_name": classes[c], "logit": float(logits[i, c])}
                for c in order[i]
            ],
        })
    return rows
