"""osr.export.triton_config: configs parse as Triton ModelConfig, match a golden file and the exported graph."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed (pip install 'osr[export]')")

from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from osr.export.triton_config import (  # noqa: E402
    parse_config,
    render_config,
    render_tensorrt_plan_config,
    write_configs,
)

GOLDEN = Path(__file__).parent / "golden" / "config.pbtxt"

MANIFEST = {
    "name": "flowers",
    "version": 3,
    "inputs": [{"name": "images", "dtype": "uint8", "shape": [-1, 64, 64, 3], "layout": "NHWC", "color": "RGB"}],
    "outputs": [
        {"name": "logits", "dtype": "float32", "shape": [-1, 5]},
        {"name": "score", "dtype": "float32", "shape": [-1]},
        {"name": "label", "dtype": "int64", "shape": [-1]},
        {"name": "p_value", "dtype": "float32", "shape": [-1]},
    ],
}

VARIANTS = {
    "gpu": lambda: render_config(MANIFEST),
    "cpu": lambda: render_config(MANIFEST, kind="cpu", instance_count=2),
    "gpu_tensorrt_fp16": lambda: render_config(MANIFEST, tensorrt=True, tensorrt_cache_dir="/cache/trt"),
    "gpu_tensorrt_fp32_two_gpus": lambda: render_config(MANIFEST, tensorrt=True, tensorrt_fp16=False, gpus=[0, 1]),
    "small_batch": lambda: render_config(MANIFEST, max_batch_size=4, preferred_batch_sizes=[2, 4], max_queue_delay_us=0),
    "tensorrt_plan": lambda: render_tensorrt_plan_config(MANIFEST, instance_count=2),
}

ONNX_TO_TRITON = {"UINT8": "TYPE_UINT8", "FLOAT": "TYPE_FP32", "INT64": "TYPE_INT64"}


# Regenerate after an intended change with:
#   python -c "import sys; sys.path.insert(0, 'tests'); import test_triton_config as t; t.GOLDEN.write_text(t.render_config(t.MANIFEST))"
def test_gpu_config_matches_golden_file() -> None:
    assert render_config(MANIFEST) == GOLDEN.read_text(encoding="utf-8")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_parses_as_model_config(variant: str) -> None:
    config = parse_config(VARIANTS[variant]())
    assert isinstance(config, model_config_pb2.ModelConfig)
    assert [tensor.name for tensor in config.input] == ["images"]
    assert [tensor.name for tensor in config.output] == ["logits", "score", "label", "p_value"]
    assert config.version_policy.latest.num_versions == 1
    # Round trip through protobuf's own printer loses nothing we wrote.
    assert parse_config(text_format.MessageToString(config)) == config


def test_gpu_config_fields() -> None:
    config = parse_config(render_config(MANIFEST))
    assert config.name == "flowers"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64
    images = config.input[0]
    assert images.data_type == model_config_pb2.TYPE_UINT8
    assert list(images.dims) == [64, 64, 3]
    outputs = {tensor.name: tensor for tensor in config.output}
    assert outputs["logits"].data_type == model_config_pb2.TYPE_FP32
    assert list(outputs["logits"].dims) == [5]
    assert not outputs["logits"].HasField("reshape")
    for name, dtype in (("score", "TYPE_FP32"), ("label", "TYPE_INT64"), ("p_value", "TYPE_FP32")):
        assert outputs[name].data_type == model_config_pb2.DataType.Value(dtype)
        assert list(outputs[name].dims) == [1]
        assert outputs[name].HasField("reshape") and list(outputs[name].reshape.shape) == []
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32, 64]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(group.kind, group.count) for group in config.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_GPU, 1)]
    assert not config.optimization.HasField("execution_accelerators")


def test_cpu_config_differs_only_in_instance_kind_and_count() -> None:
    gpu = parse_config(render_config(MANIFEST))
    cpu = parse_config(VARIANTS["cpu"]())
    assert [(group.kind, group.count) for group in cpu.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_CPU, 2)]
    del gpu.instance_group[:], cpu.instance_group[:]
    assert gpu == cpu


@pytest.mark.parametrize(("fp16", "precision"), [(True, "FP16"), (False, "FP32")])
def test_tensorrt_accelerator_and_warmup(fp16: bool, precision: str) -> None:
    config = parse_config(render_config(MANIFEST, tensorrt=True, tensorrt_fp16=fp16, tensorrt_cache_dir="/cache/trt"))
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == precision
    assert accelerator.parameters["trt_engine_cache_enable"] == "1"
    assert accelerator.parameters["trt_engine_cache_path"] == "/cache/trt"
    assert [warmup.batch_size for warmup in config.model_warmup] == [1, 64]
    for warmup in config.model_warmup:
        images = warmup.inputs["images"]
        assert images.zero_data and images.data_type == model_config_pb2.TYPE_UINT8 and list(images.dims) == [64, 64, 3]


def test_tensorrt_plan_variant() -> None:
    config = parse_config(VARIANTS["tensorrt_plan"]())
    assert config.name == "flowers-trt"
    assert config.platform == "tensorrt_plan"
    assert config.default_model_filename == "model.plan"
    assert [(group.kind, group.count) for group in config.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_GPU, 2)]
    assert [tensor.name for tensor in config.output] == [tensor.name for tensor in parse_config(render_config(MANIFEST)).output]


def test_explicit_gpus_and_batching_options() -> None:
    config = parse_config(VARIANTS["gpu_tensorrt_fp32_two_gpus"]())
    assert list(config.instance_group[0].gpus) == [0, 1]
    small = parse_config(VARIANTS["small_batch"]())
    assert small.max_batch_size == 4
    assert list(small.dynamic_batching.preferred_batch_size) == [2, 4]
    assert small.dynamic_batching.max_queue_delay_microseconds == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "tpu"}, "kind must be one of"),
        ({"kind": "cpu", "tensorrt": True}, "TensorRT accelerator needs kind='gpu'"),
        ({"kind": "cpu", "gpus": [0]}, "gpus can only be given"),
        ({"max_batch_size": 0}, "max_batch_size must be >= 1"),
        ({"max_batch_size": 8, "preferred_batch_sizes": [4, 16]}, r"\[16\] are outside 1..max_batch_size \(8\)"),
        ({"instance_count": 0}, "instance_count must be >= 1"),
        ({"max_queue_delay_us": -1}, "max_queue_delay_us must be >= 0"),
    ],
)
def test_bad_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render_config(MANIFEST, **kwargs)


def test_bad_tensors_are_refused() -> None:
    no_batch_axis = {**MANIFEST, "inputs": [{"name": "images", "dtype": "uint8", "shape": [64, 64, 3]}]}
    with pytest.raises(ValueError, match="must start with the dynamic batch axis"):
        render_config(no_batch_axis)
    strange_type = {**MANIFEST, "outputs": [{"name": "logits", "dtype": "complex64", "shape": [-1, 5]}]}
    with pytest.raises(ValueError, match="'complex64' has no Triton type"):
        render_config(strange_type)


def test_parse_config_rejects_invalid_text() -> None:
    with pytest.raises(text_format.ParseError):
        parse_config('name: "x"\nmax_batch_size: "many"\n')
    with pytest.raises(text_format.ParseError):
        parse_config('name: "x"\nno_such_field: 1\n')


def test_write_configs_writes_gpu_and_cpu_files(tmp_path: Path) -> None:
    gpu_path, cpu_path = write_configs(tmp_path / "flowers", MANIFEST, max_batch_size=32, tensorrt=True, gpus=[1])
    assert gpu_path == tmp_path / "flowers" / "config.pbtxt"
    assert cpu_path == tmp_path / "flowers" / "configs" / "cpu.pbtxt"
    gpu = parse_config(gpu_path.read_text())
    cpu = parse_config(cpu_path.read_text())
    assert gpu.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    assert not cpu.optimization.HasField("execution_accelerators")
    assert cpu.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert gpu.max_batch_size == cpu.max_batch_size == 32


def _graph_signature(model_path: Path) -> dict[str, tuple[str, list]]:
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(model_path), load_external_data=False).graph
    signature = {}
    for value in list(graph.input) + list(graph.output):
        tensor_type = value.type.tensor_type
        dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in tensor_type.shape.dim]
        signature[value.name] = (onnx.TensorProto.DataType.Name(tensor_type.elem_type), dims)
    return signature


@pytest.mark.parametrize("config_file", ["config.pbtxt", "configs/cpu.pbtxt"])
def test_exported_configs_match_the_onnx_graph(tiny_model_repository: Path, config_file: str) -> None:
    model_dir = tiny_model_repository / "tiny"
    config = parse_config((model_dir / config_file).read_text(encoding="utf-8"))
    assert config.name == model_dir.name  # Triton requires the folder name
    signature = _graph_signature(model_dir / "1" / "model.onnx")
    graph_names = set(signature)
    config_names = {tensor.name for tensor in list(config.input) + list(config.output)}
    assert config_names == graph_names
    for tensor in list(config.input) + list(config.output):
        onnx_type, graph_dims = signature[tensor.name]
        assert model_config_pb2.DataType.Name(tensor.data_type) == ONNX_TO_TRITON[onnx_type], tensor.name
        assert graph_dims[0] is None, f"{tensor.name}: the graph's batch axis must be dynamic"
        model_dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
        assert model_dims == graph_dims[1:], tensor.name
        assert list(tensor.dims) == (graph_dims[1:] or [1]), tensor.name
