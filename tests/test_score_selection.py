"""--score auto (osr.export.score_selection): the selection part never overlaps the calibration part,
held-out-class estimation gives the known answer on hand-built features, and the export uses it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from osr.export.pipeline import ExportOptions, export_command, export_to_repository
from osr.export.score_selection import choose_score, held_out_class_estimates, split_selection


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selection_and_calibration_parts_never_overlap(seed):
    labels = np.random.default_rng(seed).integers(0, 5, 203)
    select, calibrate = split_selection(labels, 0.5, seed)
    assert not np.intersect1d(select, calibrate).size
    assert np.array_equal(np.sort(np.concatenate([select, calibrate])), np.arange(len(labels)))
    for c in range(5):  # stratified: half of each class (rounded) selects
        assert abs((labels[select] == c).sum() - round(0.5 * (labels == c).sum())) <= 0


def on_circle(degrees: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angles = np.radians(degrees) + rng.normal(0, 0.03, len(degrees))
    return np.stack([np.cos(angles), np.sin(angles)], 1)


def test_held_out_class_estimate_known_answer():
    """Classes at 0, 60 and 120 degrees. Held out at either end, a linear head refit on the other two
    puts the held-out class deeper in its neighbour's half-plane than the neighbour itself (max-logit
    AUROC near 0), while its cosine to the nearest training feature drops to about cos 60 (kNN AUROC 1)."""
    rng = np.random.default_rng(0)
    train_y, select_y = np.repeat(np.arange(3), 40), np.repeat(np.arange(3), 20)
    train_f, select_f = on_circle(60.0 * train_y, rng), on_circle(60.0 * select_y, rng)
    per_class = held_out_class_estimates(train_f, train_y, select_f, select_y, ks=(1, 5))
    assert per_class["knn1"] == pytest.approx([1.0, 1.0, 1.0])
    assert per_class["max_logit"][0] < 0.1 and per_class["max_logit"][2] < 0.1
    held = np.concatenate([select_f, on_circle(60.0 * select_y, rng)])
    selection = choose_score(train_f, train_y, held, np.concatenate([select_y, select_y]))
    assert (selection.score_function, selection.knn_k) == ("knn", 1)
    assert selection.estimates["knn1"] == 1.0 and selection.estimates["max_logit"] < 0.5


def test_needs_three_classes():
    f = np.eye(2)[np.repeat([0, 1], 5)]
    with pytest.raises(ValueError, match="at least 3 known classes"):
        held_out_class_estimates(f, np.repeat([0, 1], 5), f, np.repeat([0, 1], 5))


def with_training_images(inputs, seed: int):
    """The tiny fixture with 30 random training images per class and 80 labelled held-out images."""
    rng = np.random.default_rng(seed)
    inputs.train_x = rng.integers(0, 256, (90, 32, 32, 3), dtype=np.uint8)
    inputs.train_y = np.repeat(np.arange(3), 30)
    inputs.calib_y = np.repeat(np.arange(3), [27, 27, 26])
    return inputs


def test_export_with_score_auto(tiny_export_inputs, tmp_path):
    inputs = with_training_images(tiny_export_inputs(n_calib=80), seed=1)
    options = ExportOptions(repository=tmp_path, name="auto", alpha=0.1, score_function="auto", reference=False)
    result = export_to_repository(inputs, options)
    manifest = result.manifest
    record = manifest["score_selection"]
    assert record["n_selection"] + record["n_calibration"] == 80
    assert manifest["threshold"]["n_calibration"] == record["n_calibration"] == 39  # only the calibration part (14+14+13 select)
    assert manifest["score_function"] == record["score_function"] != "auto"
    best = max(record["estimates"].values())
    assert record["estimates"][record["chosen"]] == pytest.approx(best, abs=1e-4)
    text = (result.version_dir / "report" / "report.md").read_text()
    assert "## How the score was chosen (--score auto)" in text
    assert json.loads((result.version_dir / "report" / "report.json").read_text())["score_selection"]["chosen"]
    rebuilt = export_command({"checkpoint": "runs/x/checkpoint.pt"}, ExportOptions(
        repository=tmp_path, name="auto", score_function=record["score_function"], auto_score=True))
    assert "--score auto" in rebuilt and "--knn-k" not in rebuilt


def test_fused_graph_score_is_the_standardised_sum():
    import torch
    from torch import nn

    from osr.export.feature_bank import knn_similarity
    from osr.export.graph import OsrGraph
    from osr.export.score_selection import fuse

    torch.manual_seed(0)
    body, head = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)), nn.Linear(4, 3)
    bank = nn.functional.normalize(torch.randn(9, 4), dim=1).half().numpy()
    stats = (1.0, 2.0, 0.5, 0.25)
    graph = OsrGraph(body, [0.5] * 3, [0.25] * 3, 3, 0.0, [0.0], score_function="fused", head=head,
                     feature_bank=bank, knn_k=2, fusion=stats)
    images = torch.randint(0, 256, (5, 2, 2, 3), dtype=torch.uint8)
    logits, score, _, _ = graph(images)
    features = body(graph.normalise(images))
    expected = fuse(logits.max(1).values.detach().numpy(), knn_similarity(features, torch.from_numpy(bank), 2).detach().numpy(),
                    stats)
    assert np.allclose(score.detach().numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="fused needs fusion"):
        OsrGraph(body, [0.5] * 3, [0.25] * 3, 3, 0.0, [0.0], score_function="fused", head=head, feature_bank=bank)


def test_export_with_score_fused(tiny_export_inputs, tmp_path):
    inputs = with_training_images(tiny_export_inputs(n_calib=80), seed=2)
    options = ExportOptions(repository=tmp_path, name="fused", alpha=0.1, score_function="fused", knn_k=5,
                            reference=False)
    result = export_to_repository(inputs, options)
    manifest = result.manifest
    assert manifest["score_function"] == "fused" and manifest["knn"]["k"] == 5
    assert manifest["threshold"]["n_calibration"] == manifest["score_selection"]["n_calibration"] == 39
    assert set(manifest["fusion"]) >= {"max_logit_mean", "max_logit_std", "knn_mean", "knn_std"}
    assert manifest["parity"]["max_abs_diff_score"] < 1e-3  # onnxruntime computes the same fused score
