"""OsrGraph semantics against numpy references, and the ONNX export's parity with torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from osr.export.conformal import conformal_p_values
from osr.export.graph import (
    OsrGraph,
    ParityError,
    export_onnx,
    onnx_session,
    run_onnx,
    run_torch,
    verify_onnx,
)
from osr.train.metrics import known_score

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


class ChannelMeans(nn.Module):
    """Logits = scale * per-channel mean of the normalised image: easy to predict in numpy."""

    def __init__(self, scale: float = 3.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.mean(dim=(2, 3))


def _reference_logits(images: np.ndarray, scale: float = 3.0) -> np.ndarray:
    x = (images.astype(np.float64) / 255.0 - np.array(MEAN)) / np.array(STD)
    return scale * x.mean(axis=(1, 2))


def _images(count: int, seed: int = 0, size: int = 8) -> np.ndarray:
    # A random colour per image plus noise, so every class wins the argmax for some images.
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 256, (count, 1, 1, 3))
    noise = rng.integers(-20, 21, (count, size, size, 3))
    return np.clip(colour + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("score_function", ["max_logit", "msp", "energy"])
def test_graph_matches_numpy_reference(score_function: str) -> None:
    images = _images(64)
    reference_score = known_score(_reference_logits(images), score_function)
    calibration = np.random.default_rng(1).choice(reference_score, 40)
    thresholds = np.quantile(reference_score, [0.2, 0.4, 0.6]).tolist()
    graph = OsrGraph(ChannelMeans(), MEAN, STD, 3, thresholds, calibration, score_function)
    out = run_torch(graph, images)

    logits = _reference_logits(images)
    score = known_score(logits, score_function)
    predicted = logits.argmax(axis=1)
    expected_label = np.where(score < np.array(thresholds)[predicted], -1, predicted)
    np.testing.assert_allclose(out["logits"], logits, atol=1e-5)
    np.testing.assert_allclose(out["score"], score, atol=1e-5)
    near_threshold = np.abs(score - np.array(thresholds)[predicted]) < 1e-4
    assert np.array_equal(out["label"][~near_threshold], expected_label[~near_threshold])
    assert set(out["label"].tolist()) == {-1, 0, 1, 2}
    np.testing.assert_allclose(out["p_value"], conformal_p_values(calibration.astype(np.float32), out["score"]))
    assert out["logits"].dtype == np.float32 and out["label"].dtype == np.int64


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown score function 'odin'"):
        OsrGraph(ChannelMeans(), MEAN, STD, 3, 0.0, [0.0], "odin")
    with pytest.raises(ValueError, match="calibration_scores is empty"):
        OsrGraph(ChannelMeans(), MEAN, STD, 3, 0.0, [], "max_logit")


def test_onnx_export_dynamic_batch_and_parity(tmp_path: Path) -> None:
    calibration = np.random.default_rng(2).normal(size=30)
    graph = OsrGraph(ChannelMeans(), MEAN, STD, 3, [0.1, 0.6, 0.3], calibration, "msp")
    path = export_onnx(graph, tmp_path / "model.onnx", image_size=8)
    session = onnx_session(path)
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits", "score", "label", "p_value"]

    images = _images(37, seed=3)
    expected = run_torch(graph, images)
    for batch_size in (1, 5, 37):
        actual = run_onnx(session, images, batch_size=batch_size)
        np.testing.assert_allclose(actual["logits"], expected["logits"], atol=1e-5)
        np.testing.assert_allclose(actual["p_value"], expected["p_value"], atol=1e-6)
        assert np.array_equal(actual["label"], expected["label"])

    record = verify_onnx(graph, path, images, batch_sizes=(1, 16))
    assert record["passed"] and record["label_mismatches"] == 0
    assert record["max_abs_diff_logits"] <= 1e-4 and record["batch_sizes"] == [1, 16]

    different = OsrGraph(ChannelMeans(scale=3.5), MEAN, STD, 3, [0.1, 0.6, 0.3], calibration, "msp")
    with pytest.raises(ParityError, match="max \\|logits diff\\|"):
        verify_onnx(different, path, images)


def test_training_evaluation_and_the_exported_graph_give_the_same_logits() -> None:
    """osr-train's metrics (predict_logits) and the served graph see an image the same way: the
    same normalisation of the same uint8 pixels, so the report's numbers are the training run's."""
    from osr.train.trainer import Normalize, predict_logits

    images = _images(16)
    model = ChannelMeans()
    trained = predict_logits(model, Normalize(MEAN, STD), images, torch.device("cpu"))
    graph = OsrGraph(model, MEAN, STD, 3, [0.0], np.zeros(10), "max_logit")
    np.testing.assert_allclose(trained, run_torch(graph, images)["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(trained, _reference_logits(images), rtol=1e-4, atol=1e-4)
