"""Triton `config.pbtxt` files rendered from an osr manifest.

The text is written by hand (readable, stable, diff-friendly) and checked by parsing it back
with Triton's own `ModelConfig` protobuf (`parse_config`). Conventions that matter to clients:

- Triton's `dims` leave out the batch dimension (`max_batch_size > 0`).
- Per-image scalars (`score`, `label`, `p_value`, graph shape `[N]`) are declared as `dims: [ 1 ]`
  with `reshape: { shape: [ ] }`, because Triton needs at least one non-batch dimension; clients
  receive them as `[N, 1]`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from osr.export.manifest import TENSORRT_SUFFIX

if TYPE_CHECKING:  # tritonclient is only needed to parse, never to render
    from tritonclient.grpc.model_config_pb2 import ModelConfig

ONNX_PLATFORM = "onnxruntime_onnx"
TENSORRT_PLATFORM = "tensorrt_plan"
CPU_CONFIG_NAME = "cpu"
KINDS = ("gpu", "cpu")

TRITON_DTYPES = {
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bool": "TYPE_BOOL",
}


def default_preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two from 8 up to max_batch_size, plus max_batch_size itself."""
    sizes = [size for size in (8, 16, 32, 64, 128, 256) if size < max_batch_size]
    return sizes + [max_batch_size]


def _tensor_lines(tensor: dict, indent: str) -> list[str]:
    name, dtype, shape = tensor["name"], tensor["dtype"], list(tensor["shape"])
    if dtype not in TRITON_DTYPES:
        raise ValueError(f"tensor {name!r}: dtype {dtype!r} has no Triton type (known: {', '.join(TRITON_DTYPES)})")
    if not shape or shape[0] not in (-1, None):
        raise ValueError(f"tensor {name!r}: shape {shape} must start with the dynamic batch axis -1")
    dims = [-1 if size is None else int(size) for size in shape[1:]]
    lines = [f'{indent}name: "{name}"', f"{indent}data_type: {TRITON_DTYPES[dtype]}"]
    if dims:
        lines.append(f"{indent}dims: [ {', '.join(str(size) for size in dims)} ]")
    else:
        lines += [f"{indent}dims: [ 1 ]", f"{indent}reshape: {{ shape: [ ] }}"]
    return lines


def _tensor_block(field: str, tensors: Sequence[dict]) -> list[str]:
    if not tensors:
        raise ValueError(f"manifest has no {field}s")
    lines = [f"{field} ["]
    for position, tensor in enumerate(tensors):
        lines.append("  {")
        lines += _tensor_lines(tensor, "    ")
        lines.append("  }," if position < len(tensors) - 1 else "  }")
    lines.append("]")
    return lines


def _batching_lines(max_batch_size: int, preferred_batch_sizes: Iterable[int] | None, max_queue_delay_us: int) -> list[str]:
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if max_queue_delay_us < 0:
        raise ValueError(f"max_queue_delay_us must be >= 0, got {max_queue_delay_us}")
    preferred = (
        default_preferred_batch_sizes(max_batch_size)
        if preferred_batch_sizes is None
        else sorted({int(size) for size in preferred_batch_sizes})
    )
    bad = [size for size in preferred if not 1 <= size <= max_batch_size]
    if bad:
        raise ValueError(f"preferred batch sizes {bad} are outside 1..max_batch_size ({max_batch_size})")
    lines = ["dynamic_batching {"]
    if preferred:
        lines.append(f"  preferred_batch_size: [ {', '.join(str(size) for size in preferred)} ]")
    lines += [f"  max_queue_delay_microseconds: {max_queue_delay_us}", "}"]
    return lines


def _instance_lines(kind: str, instance_count: int, gpus: Sequence[int] | None) -> list[str]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if instance_count < 1:
        raise ValueError(f"instance_count must be >= 1, got {instance_count}")
    lines = ["instance_group [", "  {", f"    count: {instance_count}", f"    kind: KIND_{kind.upper()}"]
    if gpus is not None:
        if kind != "gpu":
            raise ValueError("gpus can only be given for kind='gpu'")
        lines.append(f"    gpus: [ {', '.join(str(int(gpu)) for gpu in gpus)} ]")
    lines += ["  }", "]"]
    return lines


def _warmup_lines(manifest: dict, batch_sizes: Sequence[int]) -> list[str]:
    # Zero images at the smallest and largest batch: TensorRT builds its engine for the whole
    # batch range while the model loads instead of on the first requests.
    image = manifest["inputs"][0]
    dims = ", ".join(str(int(size)) for size in image["shape"][1:])
    lines = ["model_warmup ["]
    for position, batch_size in enumerate(batch_sizes):
        lines += [
            "  {",
            f'    name: "zeros_batch_{batch_size}"',
            f"    batch_size: {batch_size}",
            "    inputs {",
            f'      key: "{image["name"]}"',
            f"      value {{ data_type: {TRITON_DTYPES[image['dtype']]} dims: [ {dims} ] zero_data: true }}",
            "    }",
            "  }," if position < len(batch_sizes) - 1 else "  }",
        ]
    lines.append("]")
    return lines


def _tensorrt_accelerator_lines(fp16: bool, workspace_bytes: int, cache_dir: str | None) -> list[str]:
    parameters = [("precision_mode", "FP16" if fp16 else "FP32"), ("max_workspace_size_bytes", str(workspace_bytes))]
    if cache_dir:
        parameters += [("trt_engine_cache_enable", "1"), ("trt_engine_cache_path", cache_dir)]
    lines = [
        "optimization {",
        "  execution_accelerators {",
        "    gpu_execution_accelerator: [",
        "      {",
        '        name: "tensorrt"',
    ]
    lines += [f'        parameters {{ key: "{key}" value: "{value}" }}' for key, value in parameters]
    lines += ["      }", "    ]", "  }", "}"]
    return lines


def _header(manifest: dict, model_name: str, platform: str, max_batch_size: int, extra: Sequence[str] = ()) -> list[str]:
    version = manifest.get("version", "?")
    return [
        f"# Rendered by osr.export.triton_config from {manifest['name']} version {version}; "
        "re-export instead of editing.",
        f'name: "{model_name}"',
        f'platform: "{platform}"',
        *extra,
        f"max_batch_size: {max_batch_size}",
        "version_policy: { latest: { num_versions: 1 } }",
    ]


def render_config(
    manifest: dict,
    kind: str = "gpu",
    max_batch_size: int = 64,
    preferred_batch_sizes: Iterable[int] | None = None,
    max_queue_delay_us: int = 500,
    tensorrt: bool = False,
    tensorrt_fp16: bool = True,
    instance_count: int = 1,
    gpus: Sequence[int] | None = None,
    tensorrt_workspace_bytes: int = 1 << 30,
    tensorrt_cache_dir: str | None = None,
) -> str:
    """config.pbtxt text for the ONNX model of `manifest` (platform onnxruntime_onnx).

    kind "gpu" -> KIND_GPU instances (the default config.pbtxt), "cpu" -> KIND_CPU (configs/cpu.pbtxt).
    tensorrt=True adds ORT's TensorRT execution accelerator (GPU only) and a warmup at batch
    sizes 1 and max_batch_size so the engine is built while the model loads.
    """
    if tensorrt and kind != "gpu":
        raise ValueError("the TensorRT accelerator needs kind='gpu'")
    lines = _header(manifest, manifest["name"], ONNX_PLATFORM, max_batch_size)
    lines += _tensor_block("input", manifest["inputs"])
    lines += _tensor_block("output", manifest["outputs"])
    lines += _batching_lines(max_batch_size, preferred_batch_sizes, max_queue_delay_us)
    lines += _instance_lines(kind, instance_count, gpus)
    if tensorrt:
        lines += _tensorrt_accelerator_lines(tensorrt_fp16, tensorrt_workspace_bytes, tensorrt_cache_dir)
        lines += _warmup_lines(manifest, sorted({1, max_batch_size}))
    return "\n".join(lines) + "\n"


def render_tensorrt_plan_config(
    manifest: dict,
    max_batch_size: int = 64,
    preferred_batch_sizes: Iterable[int] | None = None,
    max_queue_delay_us: int = 500,
    instance_count: int = 1,
    gpus: Sequence[int] | None = None,
) -> str:
    """config.pbtxt for the `<name>-trt` model: a TensorRT engine (`model.plan`) built from the ONNX graph.

    The engine must be built on the serving GPU type with a batch profile of 1..max_batch_size
    (docs/deploy-triton.md shows the trtexec command); tensor names and types are the ONNX ones.
    """
    lines = _header(
        manifest,
        manifest["name"] + TENSORRT_SUFFIX,
        TENSORRT_PLATFORM,
        max_batch_size,
        extra=['default_model_filename: "model.plan"'],
    )
    lines += _tensor_block("input", manifest["inputs"])
    lines += _tensor_block("output", manifest["outputs"])
    lines += _batching_lines(max_batch_size, preferred_batch_sizes, max_queue_delay_us)
    lines += _instance_lines("gpu", instance_count, gpus)
    return "\n".join(lines) + "\n"


def write_configs(model_dir: Path, manifest: dict, **options) -> list[Path]:
    """Write <model_dir>/config.pbtxt (GPU) and <model_dir>/configs/cpu.pbtxt; returns both paths.

    `options` go to render_config for the GPU file; the CPU file shares the batching options
    and never uses TensorRT.
    """
    model_dir = Path(model_dir)
    cpu_options = {key: value for key, value in options.items() if not key.startswith("tensorrt") and key != "gpus"}
    gpu_path = model_dir / "config.pbtxt"
    cpu_path = model_dir / "configs" / f"{CPU_CONFIG_NAME}.pbtxt"
    cpu_path.parent.mkdir(parents=True, exist_ok=True)
    gpu_path.write_text(render_config(manifest, kind="gpu", **options), encoding="utf-8")
    cpu_path.write_text(render_config(manifest, kind="cpu", **cpu_options), encoding="utf-8")
    return [gpu_path, cpu_path]


def parse_config(text: str) -> "ModelConfig":
    """Parse config.pbtxt text with Triton's ModelConfig protobuf; raises text_format.ParseError when invalid."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())
