"""The shared `tiny_model_repository` fixture: layout and manifest consistent with the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from osr.export.manifest import OUTPUT_NAMES, load_manifest, resolve_version_dir

_ONNX_DTYPES = {onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64"}


def _tensor_specs(values) -> list[dict]:
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor.shape.dim]
        specs.append({"name": value.name, "dtype": _ONNX_DTYPES[tensor.elem_type], "shape": shape})
    return specs


def test_fixture_layout(tiny_model_repository: Path) -> None:
    version_dir = resolve_version_dir(tiny_model_repository, None, None)
    assert version_dir == tiny_model_repository / "tiny" / "1"
    assert (version_dir / "model.onnx").is_file()
    assert not [p for p in (tiny_model_repository / "tiny").iterdir() if p.name.startswith(".")]


def test_graph_inputs_and_outputs_match_manifest(tiny_model_repository: Path) -> None:
    version_dir = tiny_model_repository / "tiny" / "1"
    manifest = load_manifest(version_dir)
    model = onnx.load(str(version_dir / manifest["model_file"]))
    inputs = _tensor_specs(model.graph.input)
    outputs = _tensor_specs(model.graph.output)
    assert [spec["name"] for spec in outputs] == list(OUTPUT_NAMES)
    assert inputs == [{key: manifest["inputs"][0][key] for key in ("name", "dtype", "shape")}]
    assert outputs == manifest["outputs"]
    assert manifest["outputs"][0]["shape"] == [-1, len(manifest["classes"])]
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 18


def test_manifest_threshold_and_parity(tiny_model_repository: Path) -> None:
    manifest = load_manifest(tiny_model_repository / "tiny" / "1")
    threshold = manifest["threshold"]
    assert threshold["method"] == "split_conformal"
    assert threshold["n_calibration"] == 60
    assert threshold["target_false_rejection"] == 0.05
    assert np.isfinite(threshold["value"])
    assert manifest["parity"]["passed"] is True
    assert manifest["parity"]["max_abs_diff_logits"] <= 1e-4
    assert manifest["versions"]["onnxruntime"]


def test_triton_configs_are_rendered_from_the_manifest(tiny_model_repository: Path) -> None:
    from osr.export.triton_config import parse_config, render_config

    manifest = load_manifest(tiny_model_repository / "tiny" / "1")
    gpu = (tiny_model_repository / "tiny" / "config.pbtxt").read_text()
    cpu = (tiny_model_repository / "tiny" / "configs" / "cpu.pbtxt").read_text()
    assert gpu == render_config(manifest, "gpu", max_batch_size=64)
    assert cpu == render_config(manifest, "cpu", max_batch_size=64)
    parsed = parse_config(gpu)
    assert parsed.name == "tiny" and parsed.platform == "onnxruntime_onnx"
    assert [tensor.name for tensor in parsed.output] == list(OUTPUT_NAMES)
