"""The kNN score (osr-export --score knn): known answers on hand-built features, the head cut,
ONNX parity, and a whole export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from osr.export.feature_bank import build_bank, knn_similarity, pick_per_class, split_head
from osr.export.graph import OsrGraph, export_onnx, onnx_session, run_onnx, run_torch

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


class MeansThenHead(nn.Module):
    """Features = the normalised image's per-channel means; logits = a fixed Linear of them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def _features(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float64) / 255.0 - np.array(MEAN)) / np.array(STD)).mean(axis=(1, 2))


def _images(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 256, (count, 1, 1, 3))
    return np.clip(colour + rng.integers(-10, 11, (count, 4, 4, 3)), 0, 255).astype(np.uint8)


def _knn_graph(bank: np.ndarray, k: int, threshold: float = 0.0) -> OsrGraph:
    model = MeansThenHead()
    body, head = split_head(model, torch.randn(2, 3, 4, 4))
    return OsrGraph(body, MEAN, STD, 3, threshold, np.linspace(-1, 1, 11), "knn", head=head, feature_bank=bank, knn_k=k)


def test_knn_score_is_the_kth_largest_cosine_similarity_computed_by_hand() -> None:
    bank = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.6, 0.8, 0]], dtype=np.float16)
    images = _images(20)
    f = _features(images)
    cos = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ bank.astype(np.float64).T
    for k in (1, 2, 4):
        out = run_torch(_knn_graph(bank, k), images)
        expected = np.sort(cos, axis=1)[:, -k]
        np.testing.assert_allclose(out["score"], expected, atol=1e-5)
        np.testing.assert_allclose(out["logits"], f, atol=1e-5)  # the head still gives the logits


def test_knn_label_and_threshold_follow_the_knn_score() -> None:
    bank = np.eye(3, dtype=np.float16)
    images = _images(40, seed=3)
    scores = run_torch(_knn_graph(bank, 1), images)["score"]
    threshold = float(np.median(scores))
    out = run_torch(_knn_graph(bank, 1, threshold), images)
    assert np.array_equal(out["label"] == -1, scores < threshold)
    assert 0 < (out["label"] == -1).sum() < len(images)


def test_split_head_refuses_a_model_that_works_after_its_last_linear() -> None:
    class SquashedAfterHead(MeansThenHead):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(super().forward(x))

    model = SquashedAfterHead()
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[1.0, 2.0, 0], [0, 1.0, 0], [0, 0, 3.0]]))
    with pytest.raises(ValueError, match="does more after its last Linear"):
        split_head(model, torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="no nn.Linear"):
        split_head(nn.Conv2d(3, 3, 1), torch.randn(2, 3, 4, 4))


def test_knn_needs_a_bank_and_a_k_that_fits_it() -> None:
    body, head = split_head(MeansThenHead(), torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="feature bank"):
        OsrGraph(body, MEAN, STD, 3, 0.0, [0.0], "knn", head=head)
    with pytest.raises(ValueError, match="--knn-k 4 is larger than the feature bank"):
        OsrGraph(body, MEAN, STD, 3, 0.0, [0.0], "knn", head=head, feature_bank=np.eye(3, dtype=np.float16), knn_k=4)
    with pytest.raises(ValueError, match="only they take a head"):
        OsrGraph(body, MEAN, STD, 3, 0.0, [0.0], "max_logit", head=head)


def test_bank_rows_are_unit_float16_and_capped_per_class() -> None:
    labels = np.array([0] * 5 + [1] * 2 + [2] * 4)
    picked = pick_per_class(labels, 3)
    assert np.bincount(labels[picked]).tolist() == [3, 2, 3]
    images = _images(len(labels))
    body, _ = split_head(MeansThenHead(), torch.randn(2, 3, 4, 4))
    graph = OsrGraph(MeansThenHead(), MEAN, STD, 3, 0.0, [0.0])
    bank = build_bank(lambda batch: body(graph.normalise(batch)), images, labels, per_class=3)
    assert bank.dtype == np.float16 and bank.shape == (8, 3)
    np.testing.assert_allclose(np.linalg.norm(bank.astype(np.float64), axis=1), 1.0, atol=2e-3)
    f = _features(images[picked])
    np.testing.assert_allclose(bank, f / np.linalg.norm(f, axis=1, keepdims=True), atol=2e-3)


def test_knn_similarity_matches_torch_topk_semantics() -> None:
    features = torch.tensor([[3.0, 4.0, 0.0]])
    bank = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    assert knn_similarity(features, bank, 1).item() == pytest.approx(0.8)
    assert knn_similarity(features, bank, 2).item() == pytest.approx(0.6)
    assert knn_similarity(features, bank, 3).item() == pytest.approx(0.0)


def test_knn_graph_exports_to_onnx_with_parity(tmp_path) -> None:
    bank = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.6, 0.8, 0]], dtype=np.float16)
    graph = _knn_graph(bank, 2, threshold=0.5)
    path = export_onnx(graph, tmp_path / "model.onnx", 4)
    images = _images(16, seed=5)
    expected, actual = run_torch(graph, images), run_onnx(onnx_session(path), images, batch_size=5)
    for name in ("logits", "score", "p_value"):
        np.testing.assert_allclose(actual[name], expected[name], atol=1e-5)
    assert np.array_equal(actual["label"], expected["label"])


def test_a_whole_knn_export_calibrates_on_the_knn_score(tmp_path, tiny_export_inputs) -> None:
    from osr.export.pipeline import ExportOptions, export_to_repository

    inputs = tiny_export_inputs()
    rng = np.random.default_rng(7)
    inputs.train_x = rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    inputs.train_y = np.repeat(np.arange(3), [20, 20, 10])
    result = export_to_repository(
        inputs, ExportOptions(repository=tmp_path, name="knn", version=1, score_function="knn", knn_k=3,
                              knn_bank_per_class=12),
    )
    manifest = json.loads((result.version_dir / "manifest.json").read_text())
    assert manifest["score_function"] == "knn"
    assert manifest["knn"]["bank_size"] == 12 + 12 + 10 and manifest["knn"]["k"] == 3
    assert manifest["knn"]["bank_dtype"] == "float16" and manifest["parity"]["passed"]
    out = run_onnx(onnx_session(result.version_dir / "model.onnx"), inputs.calib_x)
    # The graph scores the calibration images as the export did (cosines, so in [-1, 1]).
    np.testing.assert_allclose(np.sort(out["score"]), np.sort(result.calibration_scores), atol=1e-5)
    assert np.all(np.abs(out["score"]) <= 1.0 + 1e-5)
    assert np.array_equal(out["label"] == -1, out["score"] < result.threshold.value)


def test_knn_export_without_training_images_says_so(tmp_path, tiny_export_inputs) -> None:
    from osr.export.pipeline import ExportOptions, export_to_repository

    with pytest.raises(ValueError, match="needs the run's training images"):
        export_to_repository(tiny_export_inputs(), ExportOptions(repository=tmp_path, name="k", score_function="knn"))


@pytest.mark.parametrize("flags", [["--knn-k", "5"], ["--knn-k", "20"], ["--knn-bank-per-class", "300"]])
def test_knn_flags_without_score_knn_are_refused_even_at_their_defaults(capsys, flags) -> None:
    from osr.export.cli import main

    with pytest.raises(SystemExit):
        main(["run/checkpoint.pt", *flags])
    assert "--knn-k and --knn-bank-per-class apply to --score knn only" in capsys.readouterr().err


def test_a_knn_k_no_bank_can_hold_is_refused_before_any_work(tmp_path) -> None:
    from osr.export.pipeline import ExportOptions, preflight

    options = ExportOptions(repository=tmp_path, name="m", score_function="knn", knn_k=31, knn_bank_per_class=10)
    with pytest.raises(ValueError, match="--knn-k 31 is larger than the feature bank can be"):
        preflight(["a", "b", "c"], 32, options, 1)
    preflight(["a", "b", "c"], 32, ExportOptions(repository=tmp_path, name="m", score_function="knn", knn_k=30,
                                                   knn_bank_per_class=10), 1)


def test_the_report_says_what_the_score_is_and_how_it_was_exported(tmp_path, tiny_export_inputs) -> None:
    from osr.export.pipeline import ExportOptions, export_to_repository

    inputs = tiny_export_inputs()
    inputs.train_x = np.random.default_rng(2).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    inputs.train_y = np.repeat(np.arange(3), 10)
    inputs.provenance["checkpoint"] = "runs/my run/checkpoint.pt"
    result = export_to_repository(inputs, ExportOptions(repository=tmp_path, name="k", score_function="knn",
                                                        knn_k=4, knn_bank_per_class=10, alpha=0.1))
    report = (result.version_dir / "report" / "report.md").read_text()
    assert "Score: cosine similarity of the classifier head's input features to their 4th nearest" in report
    assert (f"osr-export 'runs/my run' --repository {tmp_path} --name k --alpha 0.1 --score knn --knn-k 4 "
            "--knn-bank-per-class 10") in report


def test_the_int8_variant_of_a_knn_export_recalibrates_and_keeps_the_knn_record(tmp_path, tiny_export_inputs) -> None:
    from osr.export.pipeline import ExportOptions, export_to_repository

    inputs = tiny_export_inputs()
    inputs.train_x = np.random.default_rng(7).integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    inputs.train_y = np.repeat(np.arange(3), 20)
    result = export_to_repository(inputs, ExportOptions(repository=tmp_path, name="k", version=1, score_function="knn",
                                                        knn_k=3, int8=True))
    manifest = json.loads((result.variant_dirs["int8"] / "manifest.json").read_text())
    assert manifest["score_function"] == "knn" and manifest["knn"]["bank_size"] == 60
    assert manifest["parity"]["passed"] and manifest["parity"]["label_mismatches"] == 0
    # The bank's product stays float: no dequantised tensor feeds it, and the scores stay continuous.
    import onnx

    int8 = onnx.load(str(result.variant_dirs["int8"] / "model.onnx"))
    producers = {out: node.op_type for node in int8.graph.node for out in node.output}
    bank_products = [n for n in int8.graph.node if n.op_type == "MatMul"
                     and all(producers.get(i) != "DequantizeLinear" for i in n.input)]
    assert len(bank_products) == 1
    scores = run_onnx(onnx_session(result.variant_dirs["int8"] / "model.onnx"), inputs.calib_x)["score"]
    assert len(np.unique(scores)) == len(scores)


def test_a_bank_too_big_for_an_onnx_file_is_refused_after_one_batch(monkeypatch) -> None:
    import osr.export.feature_bank as feature_bank

    monkeypatch.setattr(feature_bank, "MAX_BANK_BYTES", 40)  # 8 rows x 3 features x 2 bytes = 48
    calls = []
    def features_of(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        return torch.ones(len(batch), 3)

    with pytest.raises(ValueError, match="lower --knn-bank-per-class"):
        build_bank(features_of, _images(8), np.zeros(8, dtype=np.int64), per_class=8, batch_size=2)
    assert calls == [2]
