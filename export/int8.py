"""Optional int8 variant `<name>-int8`: static quantisation of the exported graph with
onnxruntime.quantization, and a threshold re-calibrated on the quantised model's own scores.

How:
* The fp32 model.onnx is quantised in place of the whole graph, but only the network's Conv / Gemm /
  MatMul nodes (`op_types_to_quantize`) get QDQ pairs (QDQ format, activations uint8, weights int8
  per channel). Pre-processing (cast, /255, normalise) and the decision tail (score, threshold,
  p-value; the kNN score's product with its feature bank, `score_nodes`) stay float, so the int8
  graph has the same inputs and outputs as the fp32 one.
* Activation ranges come from training images (`ExportInputs.quantization_x`), not from the
  calibration images, so the int8 model is a function of training data only and the conformal
  guarantee of the re-calibrated threshold stays exact. Without them the calibration images are
  used and the manifest says the guarantee is then approximate.
* The int8 logits differ from fp32, so the threshold and the baked-in calibration scores are
  recomputed from the int8 graph's scores and written into the quantised graph's constants
  (located by value in the fp32 graph: the torch exporter renames and reshapes buffers).
* Speed (images/s, onnxruntime CPU, both models) and decision agreement with fp32 go into the
  int8 manifest ("int8") and its report.
"""

from __future__ import annotations

import json

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from osr.export import conformal
from osr.export.graph import onnx_session, run_onnx
from osr.export.manifest import INPUT_NAME, INT8_SUFFIX, write_manifest
from osr.export.repository import version_writer

if TYPE_CHECKING:
    import onnx

    from osr.export.pipeline import ExportInputs, ExportOptions, ExportResult

QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]
RANGE_IMAGES = 256


class ImageBatches:
    """onnxruntime CalibrationDataReader over uint8 NHWC images."""

    def __init__(self, images: np.ndarray, batch_size: int = 32) -> None:
        self._images = np.asarray(images, dtype=np.uint8)
        self._batch_size = batch_size
        self._iterator: Iterator[dict] | None = None
        self.rewind()

    def _batches(self) -> Iterator[dict]:
        for start in range(0, len(self._images), self._batch_size):
            yield {INPUT_NAME: np.ascontiguousarray(self._images[start : start + self._batch_size])}

    def get_next(self) -> dict | None:
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = self._batches()


def score_nodes(model: "onnx.ModelProto") -> list[str]:
    """The Conv/Gemm/MatMul nodes that compute the score rather than the network: the kNN score's
    product with its feature bank (osr.export.feature_bank), found as the node feeding a TopK or
    as one fed by the bank's float16 constant (small banks are folded to float32 by the exporter).
    They stay float, like the rest of the decision tail, so int8 rounding does not collapse the
    score onto a few hundred values."""
    into_topk = {node.input[0] for node in model.graph.node if node.op_type == "TopK"}
    tainted = {init.name for init in model.graph.initializer if init.data_type == 10}  # FLOAT16
    excluded = []
    for node in model.graph.node:  # topological order
        from_bank = any(name in tainted for name in node.input)
        if from_bank:
            tainted.update(node.output)
        if node.op_type in QUANTIZED_OPS and (from_bank or any(out in into_topk for out in node.output)):
            excluded.append(node.name)
    return excluded


def quantize_graph(fp32_path: Path, int8_path: Path, range_images: np.ndarray, reduce_range: bool = False) -> Path:
    """Static QDQ quantisation of the network's Conv/Gemm/MatMul nodes; the rest of the graph
    (pre-processing and the decision tail, the kNN score's bank product included) stays float."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(ImageBatches, CalibrationDataReader):
        pass

    # The fp32 graph is already optimised by the torch exporter (batch norm folded), so ORT's
    # "consider pre-processing" advice (logged on the root logger) does not apply here.
    quiet = _DropMessages("pre-processing")
    logging.getLogger().addFilter(quiet)
    try:
        quantize_static(
            str(fp32_path),
            str(int8_path),
            _Reader(range_images),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            nodes_to_exclude=score_nodes(onnx.load(str(fp32_path))),
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        logging.getLogger().removeFilter(quiet)
    return Path(int8_path)


class _DropMessages(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def _find_constant(model: "onnx.ModelProto", values: np.ndarray, what: str) -> str:
    from onnx import numpy_helper

    target = np.asarray(values, dtype=np.float32).ravel()
    matches = [
        init.name
        for init in model.graph.initializer
        if init.data_type == 1
        and int(np.prod(init.dims)) == target.size
        and np.array_equal(numpy_helper.to_array(init).ravel(), target)
    ]
    if len(matches) != 1:
        raise RuntimeError(f"expected one constant holding the {what} in the graph, found {len(matches)}")
    return matches[0]


def _replace_constant(model: "onnx.ModelProto", name: str, values: np.ndarray) -> None:
    from onnx import numpy_helper

    for index, init in enumerate(model.graph.initializer):
        if init.name == name:
            array = np.asarray(values, dtype=np.float32).reshape(tuple(init.dims))
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, name))
            return
    raise KeyError(name)


def decision_constants(fp32_path: Path, thresholds: np.ndarray, calibration_scores: np.ndarray) -> tuple[str, str]:
    """Names of the per-class threshold and sorted calibration-score constants in an exported graph."""
    import onnx

    model = onnx.load(str(fp32_path))
    return (
        _find_constant(model, thresholds, "per-class thresholds"),
        _find_constant(model, np.sort(np.asarray(calibration_scores, dtype=np.float32)), "calibration scores"),
    )


def images_per_second(path: Path, images: np.ndarray, batch_size: int = 32, min_seconds: float = 0.3) -> float:
    """onnxruntime CPU throughput over `images` (one warm-up pass, then timed passes)."""
    session = onnx_session(path)
    run_onnx(session, images[:batch_size], batch_size)
    done, started = 0, time.perf_counter()
    while True:
        run_onnx(session, images, batch_size)
        done += len(images)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return done / elapsed


def _thresholds_array(threshold: conformal.ConformalThreshold, num_classes: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(threshold.class_thresholds, dtype=np.float32), (num_classes,)).copy()


def export_int8_variant(
    result: "ExportResult", inputs: "ExportInputs", options: "ExportOptions", version: int
) -> Path:
    """Write `<name>-int8/<version>/` (model.onnx, manifest.json, report/) and its Triton configs."""
    import onnx

    from osr.export.pipeline import MODEL_FILE, REPORT_DIR, build_manifest, report_metrics, write_triton_configs

    base = result.manifest
    num_classes = len(inputs.classes)
    fp32_path = result.version_dir / base["model_file"]
    fp32_session = onnx_session(fp32_path)
    threshold_name, calibration_name = decision_constants(
        fp32_path, _thresholds_array(result.threshold, num_classes), result.calibration_scores
    )

    if inputs.quantization_x is not None and len(inputs.quantization_x):
        range_images, range_source = inputs.quantization_x[:RANGE_IMAGES], "training images"
    else:
        range_images, range_source = inputs.calib_x[:RANGE_IMAGES], "calibration images (guarantee approximate)"

    name = options.name + INT8_SUFFIX
    with version_writer(options.repository, name, version, options.force) as staging:
        with tempfile.TemporaryDirectory() as scratch:
            raw_path = quantize_graph(fp32_path, Path(scratch) / "quantized.onnx", range_images)
            raw = run_onnx(onnx_session(raw_path), inputs.calib_x)
            threshold = conformal.calibrate(
                raw["score"],
                options.alpha,
                confidence=options.confidence,
                predicted=raw["logits"].argmax(axis=1) if options.per_class else None,
                num_classes=num_classes,
            )
            model = onnx.load(str(raw_path))
        _replace_constant(model, threshold_name, _thresholds_array(threshold, num_classes))
        _replace_constant(model, calibration_name, np.sort(raw["score"].astype(np.float32)))
        model_path = staging / MODEL_FILE
        onnx.save(model, str(model_path))
        onnx.checker.check_model(str(model_path), full_check=True)

        self_check = _self_check(model_path, inputs.calib_x, threshold, raw["score"], num_classes)
        agreement_images = _agreement_images(inputs)
        fp32_labels = run_onnx(fp32_session, agreement_images)["label"]
        int8_out = run_onnx(onnx_session(model_path), agreement_images)
        speed_images = agreement_images[: max(64, min(len(agreement_images), 256))]
        int8_record = {
            "quantization": "onnxruntime.quantization.quantize_static, QDQ, activations uint8, "
            f"weights int8 per channel, ops {', '.join(QUANTIZED_OPS)}",
            "activation_ranges_from": range_source,
            "decision_agreement_with_fp32": float(np.mean(int8_out["label"] == fp32_labels)),
            "agreement_images": int(len(agreement_images)),
            "images_per_second_fp32": images_per_second(fp32_path, speed_images),
            "images_per_second_int8": images_per_second(model_path, speed_images),
            "speed_measured_with": "onnxruntime CPUExecutionProvider, batch 32",
            "fp32_threshold": result.threshold.value,
        }
        metrics = report_metrics(model_path, staging / REPORT_DIR, inputs, threshold, options)
        add_int8_to_report(staging / REPORT_DIR, int8_record, threshold.value)
        manifest = build_manifest(
            name,
            version,
            model_path,
            inputs,
            threshold,
            options.score_function,
            metrics,
            self_check,
            extra={"variant_of": base["name"], "variant": "int8", "int8": int8_record,
                   **({"knn": base["knn"]} if "knn" in base else {})},
        )
        write_manifest(staging, manifest)
    write_triton_configs(Path(options.repository) / name, manifest, options)
    return Path(options.repository) / name / str(version)


def add_int8_to_report(report_dir: Path, record: dict, int8_threshold: float) -> None:
    """The int8 variant's report also shows its speed and decision agreement against fp32."""
    if not (report_dir / "report.md").exists():
        return
    with open(report_dir / "report.md", "a") as f:
        f.write(
            "\n## INT8 against fp32\n\n| | value |\n|---|---|\n"
            f"| quantisation | {record['quantization']} |\n"
            f"| activation ranges from | {record['activation_ranges_from']} |\n"
            f"| decisions equal to fp32 (label incl. unknown) | {record['decision_agreement_with_fp32']:.4f} "
            f"on {record['agreement_images']} images |\n"
            f"| images/s fp32 | {record['images_per_second_fp32']:.0f} |\n"
            f"| images/s int8 | {record['images_per_second_int8']:.0f} |\n"
            f"| measured with | {record['speed_measured_with']} |\n"
            f"| threshold fp32 -> int8 (re-calibrated) | {record['fp32_threshold']:.5f} -> {int8_threshold:.5f} |\n")
    report_json = report_dir / "report.json"
    if report_json.exists():
        data = json.loads(report_json.read_text())
        data["int8"] = record
        report_json.write_text(json.dumps(data, indent=2))


def _agreement_images(inputs: "ExportInputs") -> np.ndarray:
    pools = [x for x in (inputs.test_known_x, inputs.test_unknown_x) if x is not None and len(x)]
    return np.concatenate(pools) if pools else inputs.calib_x


def _self_check(
    model_path: Path,
    calib_x: np.ndarray,
    threshold: conformal.ConformalThreshold,
    calibration_scores: np.ndarray,
    num_classes: int,
) -> dict:
    """The patched graph decides as the re-calibrated threshold says (the "parity" record)."""
    out = run_onnx(onnx_session(model_path), calib_x)
    predicted = out["logits"].argmax(axis=1)
    limits = _thresholds_array(threshold, num_classes)[predicted]
    expected_label = np.where(out["score"] < limits, -1, predicted)
    expected_p = conformal.conformal_p_values(calibration_scores.astype(np.float32), out["score"])
    record = {
        "reference": "numpy decision rule with the re-calibrated int8 threshold",
        "n_images": int(len(calib_x)),
        "label_mismatches": int(np.sum(out["label"] != expected_label)),
        "max_abs_diff_p_value": float(np.max(np.abs(out["p_value"] - expected_p))),
    }
    record["passed"] = bool(record["label_mismatches"] == 0 and record["max_abs_diff_p_value"] < 1e-6)
    if not record["passed"]:
        raise RuntimeError(f"the int8 graph does not apply its re-calibrated threshold: {record}")
    return record
