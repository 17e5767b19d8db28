"""Optional TensorRT engine (`model.plan`) built from the exported ONNX graph, written as the
`<name>-trt` model (Triton platform tensorrt_plan) next to the ONNX model.

Engines are specific to the GPU model and TensorRT version they are built with: build on the
serving GPU type. The `tensorrt` Python package and a CUDA GPU are needed here; `probe_tensorrt`
says which is missing so `osr-export --tensorrt` can refuse before doing any work.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from osr.export.manifest import INPUT_NAME, OUTPUT_NAMES, TENSORRT_SUFFIX, sha256_file, write_manifest
from osr.export.repository import version_writer, write_model_configs

if TYPE_CHECKING:
    from osr.export.pipeline import ExportInputs, ExportOptions, ExportResult

PLAN_FILE = "model.plan"
LOGITS_TOLERANCE_FP32 = 1e-3
LOGITS_TOLERANCE_FP16 = 5e-2  # relative to the largest |logit|


class TensorRTUnavailable(RuntimeError):
    """TensorRT cannot be used here; the message says what is missing."""


def probe_tensorrt() -> str | None:
    """None when TensorRT engines can be built here, else a message saying what is missing."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as error:
        return (
            "the `tensorrt` Python package is not installed "
            f"({error}); install it with `pip install tensorrt` (or the osr[gpu] extra)"
        )
    try:
        import torch
    except ImportError:
        return "torch is needed to run the TensorRT check and is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False); TensorRT engines are built on the GPU"
    return None


def require_tensorrt() -> None:
    """Raise TensorRTUnavailable with the probe's message when TensorRT cannot be used."""
    problem = probe_tensorrt()
    if problem is not None:
        raise TensorRTUnavailable(f"TensorRT export is not possible here: {problem}")


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    fp16: bool,
    image_size: int,
    max_batch_size: int = 64,
    workspace_bytes: int = 1 << 30,
) -> Path:
    """Parse the ONNX file and serialise an engine with a batch profile 1..max_batch_size."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shape = (image_size, image_size, 3)
    optimum = min(max(1, max_batch_size // 2), max_batch_size)
    profile.set_shape(INPUT_NAME, (1, *shape), (optimum, *shape), (max_batch_size, *shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    plan_path = Path(plan_path)
    plan_path.write_bytes(bytes(serialized))
    return plan_path


class EngineRunner:
    """Run a serialised engine on uint8 NHWC batches (buffers as torch CUDA tensors)."""

    def __init__(self, plan_path: Path) -> None:
        import tensorrt as trt
        import torch

        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        self.context = self.engine.create_execution_context()
        self._dtypes = {name: trt.nptype(self.engine.get_tensor_dtype(name)) for name in (INPUT_NAME, *OUTPUT_NAMES)}

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).cuda()
        self.context.set_input_shape(INPUT_NAME, tuple(batch.shape))
        self.context.set_tensor_address(INPUT_NAME, batch.data_ptr())
        outputs = {}
        for name in OUTPUT_NAMES:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.zeros(0, dtype=self._dtypes[name])).dtype
            outputs[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return {name: value.cpu().numpy() for name, value in outputs.items()}

    def run_batched(self, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
        parts = [self.run(images[start : start + batch_size]) for start in range(0, len(images), batch_size)]
        return {name: np.concatenate([part[name] for part in parts]) for name in OUTPUT_NAMES}


def compare_with_onnxruntime(plan_path: Path, onnx_path: Path, images: np.ndarray, fp16: bool, batch_size: int) -> dict:
    """Logits difference and decision agreement of the engine vs onnxruntime (CPU), plus speed."""
    from osr.export.graph import onnx_session, run_onnx

    expected = run_onnx(onnx_session(onnx_path), images, batch_size=batch_size)
    runner = EngineRunner(plan_path)
    actual = runner.run_batched(images, batch_size)
    started = time.perf_counter()
    actual = runner.run_batched(images, batch_size)
    elapsed = time.perf_counter() - started
    diff = float(np.max(np.abs(actual["logits"].astype(np.float64) - expected["logits"])))
    scale = float(np.max(np.abs(expected["logits"]))) or 1.0
    tolerance = LOGITS_TOLERANCE_FP16 * scale if fp16 else LOGITS_TOLERANCE_FP32
    agreement = float(np.mean(actual["label"].astype(np.int64) == expected["label"]))
    return {
        "reference": "onnxruntime CPUExecutionProvider on model.onnx",
        "n_images": int(len(images)),
        "max_abs_diff_logits": diff,
        "tolerance_logits": tolerance,
        "label_agreement": agreement,
        "images_per_second": float(len(images) / elapsed) if elapsed > 0 else None,
        "batch_size": int(batch_size),
        "passed": bool(diff <= tolerance and (fp16 or agreement == 1.0)),
    }


def export_tensorrt_variant(
    result: "ExportResult", inputs: "ExportInputs", options: "ExportOptions", version: int
) -> Path:
    """Build `<name>-trt/<version>/model.plan` with its manifest and tensorrt_plan config."""
    import tensorrt as trt
    import torch

    from osr.export.pipeline import parity_sample

    require_tensorrt()
    base = result.manifest
    name = options.name + TENSORRT_SUFFIX
    onnx_path = result.version_dir / base["model_file"]
    with version_writer(options.repository, name, version, options.force) as staging:
        plan_path = build_engine(
            onnx_path, staging / PLAN_FILE, options.tensorrt_fp16, inputs.image_size, options.max_batch_size
        )
        check = compare_with_onnxruntime(
            plan_path,
            onnx_path,
            parity_sample(inputs, options.parity_images),
            options.tensorrt_fp16,
            min(options.max_batch_size, 16),
        )
        if not check["passed"]:
            raise RuntimeError(f"TensorRT engine disagrees with onnxruntime: {check}")
        manifest = dict(base)
        manifest.update(
            {
                "name": name,
                "model_file": PLAN_FILE,
                "sha256": sha256_file(plan_path),
                "variant_of": base["name"],
                "variant": "tensorrt_plan",
                "parity": check,
                "tensorrt": {
                    "version": trt.__version__,
                    "fp16": bool(options.tensorrt_fp16),
                    "gpu": torch.cuda.get_device_name(0),
                    "max_batch_size": int(options.max_batch_size),
                    "note": "the engine only runs on this GPU model with this TensorRT version",
                },
            }
        )
        write_manifest(staging, manifest)
    try:
        from osr.export.triton_config import render_tensorrt_plan_config
    except ImportError:
        pass
    else:
        write_model_configs(
            Path(options.repository) / name,
            render_tensorrt_plan_config(base, max_batch_size=options.max_batch_size),
            None,
            force=options.force,
        )
    return Path(options.repository) / name / str(version)
