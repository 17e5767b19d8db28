"""The int8 variant: what stays float, the bias correction, and the variant of a model already in a
repository (no checkpoint: python -m osr.export.int8), on the tiny fixture."""

from __future__ import annotations

import json
import types

import numpy as np
import onnx
import pytest
import torch

from osr.export.conformal import threshold_at_rank
from osr.export.graph import onnx_session, run_onnx


def _with_conv_biases(inputs):
    """The tiny fixture's classifier32 with random BatchNorm statistics, so its exported
    convolutions carry biases (a freshly built BatchNorm folds into nothing)."""
    generator = torch.Generator().manual_seed(3)
    for module in inputs.model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.3)
    return inputs


def _knn_export(tmp_path, tiny_export_inputs, conv_biases: bool = False):
    from osr.export.pipeline import ExportOptions, export_to_repository

    inputs = tiny_export_inputs()
    if conv_biases:
        inputs = _with_conv_biases(inputs)
    inputs.train_x = np.random.default_rng(7).integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    inputs.train_y = np.repeat(np.arange(3), 20)
    export_to_repository(inputs, ExportOptions(repository=tmp_path, name="tiny", version=1, score_function="knn",
                                               knn_k=3, reference=False))
    return inputs


def _data(inputs, **changes):
    fields = dict(classes=list(inputs.classes), image_size=inputs.image_size, calib_x=inputs.calib_x,
                  calib_y=inputs.calib_y, test_known_x=inputs.test_known_x, test_known_y=inputs.test_known_y,
                  test_unknown_x=inputs.test_unknown_x, train_x=inputs.train_x)
    return types.SimpleNamespace(**{**fields, **changes})


def test_the_decision_tail_and_the_bank_product_stay_float(tmp_path, tiny_export_inputs) -> None:
    from osr.export.int8 import float_nodes, quantize_graph

    _knn_export(tmp_path, tiny_export_inputs)
    fp32_path = tmp_path / "tiny" / "1" / "model.onnx"
    fp32 = onnx.load(str(fp32_path))
    kept = set(float_nodes(fp32))
    by_name = {node.name: node for node in fp32.graph.node}
    assert {by_name[n].op_type for n in kept} >= {"Gemm", "MatMul", "TopK", "ReduceL2"}  # head, bank, score
    assert not any(by_name[n].op_type == "Conv" for n in kept)  # the body is quantised

    int8_path = quantize_graph(fp32_path, tmp_path / "q.onnx", np.zeros((8, 32, 32, 3), np.uint8) + 128,
                               bias_correction=False)
    int8 = onnx.load(str(int8_path))
    producers = {out: node.op_type for node in int8.graph.node for out in node.output}
    for node in int8.graph.node:
        if node.name in kept and node.op_type in ("Gemm", "MatMul"):
            assert all(producers.get(i) != "DequantizeLinear" for i in node.input), node.name
        if node.op_type == "Conv":
            assert producers.get(node.input[1]) == "DequantizeLinear", node.name


def test_bias_correction_matches_each_convolutions_output_mean(tmp_path, tiny_export_inputs) -> None:
    """Known answer: after the correction, the simulated int8 graph's first convolution (whose input
    no other correction changes) has the fp32 output mean per channel, up to half a bias step."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from osr.export.int8 import correct_biases, quantize_graph

    inputs = _knn_export(tmp_path, tiny_export_inputs, conv_biases=True)
    fp32_path = tmp_path / "tiny" / "1" / "model.onnx"
    images = inputs.train_x[:32]
    quantize_graph(fp32_path, tmp_path / "q.onnx", images, bias_correction=False)
    fp32, int8 = onnx.load(str(fp32_path)), onnx.load(str(tmp_path / "q.onnx"))
    first = next(n for n in int8.graph.node if n.op_type == "Conv")
    producers = {out: node for node in int8.graph.node for out in node.output}
    scale = numpy_helper.to_array(next(i for i in int8.graph.initializer
                                       if i.name == producers[first.input[2]].input[1]))

    def mean_of(model, tensor, simulate):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        del copy.graph.output[:]
        copy.graph.output.append(helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
        options = ort.SessionOptions()
        if simulate:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        out = ort.InferenceSession(copy.SerializeToString(), options).run([tensor], {"images": images})[0]
        return out.mean(axis=(0, 2, 3))

    expected = mean_of(fp32, next(n for n in fp32.graph.node if n.name == first.name).output[0], False)
    before = np.abs(mean_of(int8, first.output[0], True) - expected)
    corrected = correct_biases(fp32, int8, images)
    after = np.abs(mean_of(int8, first.output[0], True) - expected)
    assert corrected == sum(n.op_type == "Conv" for n in int8.graph.node)
    assert np.all(after <= scale / 2 + 1e-5)
    assert after.sum() < before.sum()


def test_int8_from_repository_quantises_recalibrates_and_records_how(tmp_path, tiny_export_inputs) -> None:
    from osr.export.int8 import int8_from_repository

    inputs = _knn_export(tmp_path, tiny_export_inputs)
    variant = int8_from_repository(tmp_path, "tiny", data=_data(inputs), command="python -m osr.export.int8 x")
    assert variant == tmp_path / "tiny-int8" / "1"
    manifest = json.loads((variant / "manifest.json").read_text())
    assert manifest["variant_of"] == "tiny" and manifest["variant"] == "int8"
    assert manifest["score_function"] == "knn" and manifest["knn"]["bank_size"] == 60
    assert manifest["parity"]["passed"]
    record = manifest["int8"]
    assert record["made_with"]["command"] == "python -m osr.export.int8 x"
    assert record["made_with"]["calibration_check_max_score_difference"] < 1e-4
    assert record["agreement_images"] == len(inputs.test_known_x) + len(inputs.test_unknown_x)
    assert record["bias_correction"].startswith("empirical") and record["file_bytes_int8"] > 0
    # its own threshold: the conformal rank of its own calibration scores
    calib = run_onnx(onnx_session(variant / "model.onnx"), inputs.calib_x)
    assert manifest["threshold"]["value"] == pytest.approx(
        threshold_at_rank(calib["score"], manifest["threshold"]["rank"]), abs=1e-6)
    assert np.array_equal(calib["label"], np.where(calib["score"] < manifest["threshold"]["value"], -1,
                                                   calib["logits"].argmax(axis=1)))
    report = (variant / "report" / "report.md").read_text()
    assert "## INT8 against fp32" in report and "python -m osr.export.int8 x" in report
    # a second run refuses to overwrite
    with pytest.raises(FileExistsError):
        int8_from_repository(tmp_path, "tiny", data=_data(inputs))


def test_int8_from_repository_refuses_other_calibration_images(tmp_path, tiny_export_inputs) -> None:
    from osr.export.int8 import int8_from_repository

    inputs = _knn_export(tmp_path, tiny_export_inputs)
    for other in (np.zeros_like(inputs.calib_x), inputs.calib_x[:-1]):  # other images; one image fewer
        with pytest.raises(ValueError, match="not those tiny version 1 was calibrated on"):
            int8_from_repository(tmp_path, "tiny", data=_data(inputs, calib_x=other))
    assert not (tmp_path / "tiny-int8").exists()


def _resize_graph(mul_shape: tuple[int, ...]) -> onnx.ModelProto:
    """x [1,3,4,4] -> bilinear Resize to 8 x 8 -> Mul(c) -> Add(d) -> y (the input adapter's shape)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([1, 3, 8, 8], np.int64), "sizes"),
             numpy_helper.from_array(rng.normal(size=mul_shape).astype(np.float32), "scale"),
             numpy_helper.from_array(rng.normal(size=(1, 3, 1, 1)).astype(np.float32), "shift")]
    nodes = [helper.make_node("Resize", ["x", "", "", "sizes"], ["up"], name="resize", mode="linear",
                              coordinate_transformation_mode="half_pixel"),
             helper.make_node("Mul", ["up", "scale"], ["scaled"], name="mul"),
             helper.make_node("Add", ["scaled", "shift"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_the_input_adapter_moves_before_the_upsampling_and_computes_the_same() -> None:
    import onnxruntime as ort

    from osr.export.int8 import affine_before_resize

    model = _resize_graph((1, 3, 1, 1))
    x = np.random.default_rng(1).normal(size=(1, 3, 4, 4)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(["y"], {"x": x})[0]
    assert affine_before_resize(model) == ["mul", "add"]
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Mul", "Add", "Resize"]
    assert model.graph.node[0].input[0] == "x" and model.graph.node[2].output[0] == "y"
    after = ort.InferenceSession(model.SerializeToString()).run(["y"], {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_a_scale_that_varies_over_space_is_not_moved() -> None:
    from osr.export.int8 import affine_before_resize

    model = _resize_graph((1, 3, 8, 8))
    assert affine_before_resize(model) == []
    assert [n.op_type for n in model.graph.node] == ["Resize", "Mul", "Add"]
