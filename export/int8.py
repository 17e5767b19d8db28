"""Optional int8 variant `<name>-int8`: static quantisation of the exported graph with
onnxruntime.quantization, and a threshold re-calibrated on the quantised model's own scores.

How:
* The fp32 model.onnx is quantised (QDQ format, activations uint8, weights int8 per channel), but
  only the network's body: its Conv / Gemm / MatMul nodes together with the activations and
  residual additions between them (`BODY_OPS`: Clip is ReLU6, fused into the convolution's
  output range, so activations are not rounded twice). Pre-processing (cast, /255, normalise,
  resize) and the decision tail stay float: the classifier head and everything computed from its
  input features (`tail_nodes`: logits, the score, the kNN score's normalisation and its product
  with the feature bank, threshold, p-value), so the int8 graph has the same inputs and outputs
  as the fp32 one and the score is not rounded onto a few hundred values.
* Bias correction (`correct_biases`): rounding the weights to int8 shifts each convolution's
  output mean per channel, and the shifts add up through a deep network. Each quantised
  convolution's int32 bias is corrected, in graph order, so that the mean of its output over the
  activation-range images equals the fp32 graph's (Nagel et al. 2019, empirical bias correction).
  On the bundled EfficientNet-Lite0 this halves the spread of the int8 score around the fp32 one.
* The input adapter's per-channel scale and shift, which the graph applies after its in-graph
  upsampling, run before it in the int8 graph (`affine_before_resize`: equal up to float
  rounding, on 16x fewer pixels at 32 -> 128 px).
* Activation ranges and bias corrections come from training images (`ExportInputs.quantization_x`),
  not from the calibration images, so the int8 model is a function of training data only and the
  conformal guarantee of the re-calibrated threshold stays exact. Without them the calibration
  images are used and the manifest says the guarantee is then approximate.
* The int8 logits differ from fp32, so the threshold and the baked-in calibration scores are
  recomputed from the int8 graph's scores and written into the quantised graph's constants
  (located by value in the fp32 graph: the torch exporter renames and reshapes buffers).
* Speed (images/s, onnxruntime CPU, both models) and decision agreement with fp32 go into the
  int8 manifest ("int8") and its report.

Without the training checkpoint (`python -m osr.export.int8`, `int8_from_repository`): the variant
of a model already in a repository, from its model.onnx and the data its manifest's training
config rebuilds; the calibration images are checked against the scores baked into the graph.
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

log = logging.getLogger("osr.export.int8")  # also when run as python -m osr.export.int8

if TYPE_CHECKING:
    import onnx

    from osr.export.pipeline import ExportInputs, ExportOptions, ExportResult

QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]  # the network's weighted nodes
BODY_OPS = QUANTIZED_OPS + ["Clip", "Relu", "LeakyRelu", "Add"]  # with their activations and residual additions
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


def tail_nodes(model: "onnx.ModelProto") -> list[str]:
    """The decision tail: the node computing the ``logits`` output (the classifier head) and every
    node computed from the head's input features (score, kNN normalisation and bank product,
    threshold, p-value). Empty when the logits do not come from a Gemm / MatMul."""
    producers = {out: node for node in model.graph.node for out in node.output}
    head = producers.get("logits")
    if head is None or head.op_type not in ("Gemm", "MatMul"):
        return []
    reached, tail = {head.input[0]}, []
    for node in model.graph.node:  # topological order
        if node is head or any(name in reached for name in node.input):
            reached.update(node.output)
            tail.append(node.name)
    return tail


def quantize_graph(fp32_path: Path, int8_path: Path, range_images: np.ndarray, reduce_range: bool = False,
                   bias_correction: bool = True) -> Path:
    """Static QDQ quantisation of the network's body (`BODY_OPS`); pre-processing and the decision
    tail (`tail_nodes`, `score_nodes`: the head, the score, the kNN bank product) stay float, the
    input adapter moved before the in-graph upsampling (`affine_before_resize`). With
    ``bias_correction`` the convolutions' biases are then corrected on ``range_images``."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(ImageBatches, CalibrationDataReader):
        pass

    model = onnx.load(str(fp32_path))
    moved = affine_before_resize(model)
    # The fp32 graph is already optimised by the torch exporter (batch norm folded), so ORT's
    # "consider pre-processing" advice (logged on the root logger) does not apply here.
    quiet = _DropMessages("pre-processing")
    logging.getLogger().addFilter(quiet)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            source = Path(scratch) / "fp32.onnx"
            onnx.save(model, str(source))
            quantize_static(
                str(source),
                str(int8_path),
                _Reader(range_images),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=BODY_OPS,
                nodes_to_exclude=float_nodes(model) + moved,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                extra_options={"CalibMaxIntermediateOutputs": 32},  # bounded memory at any image size
            )
    finally:
        logging.getLogger().removeFilter(quiet)
    if bias_correction:
        int8 = onnx.load(str(int8_path))
        correct_biases(model, int8, range_images)
        onnx.save(int8, str(int8_path))
    return Path(int8_path)


def _per_channel_constant(model: "onnx.ModelProto", name: str) -> bool:
    """``name`` is a constant that broadcasts over NCHW along the channels only (or a scalar)."""
    init = next((i for i in model.graph.initializer if i.name == name), None)
    if init is None or len(init.dims) > 4:
        return False
    dims = list(init.dims)
    return len(dims) == 0 or all(d == 1 for i, d in enumerate(dims) if i != len(dims) - 3)


def affine_before_resize(model: "onnx.ModelProto") -> list[str]:
    """Move a per-channel ``Mul`` then ``Add`` by constants that directly follow a ``Resize``
    (osr.train.adapter's input adapter after the upsampling) before the Resize, in place; the
    names of the moved nodes ([] when the pattern is absent). Linear or nearest resizing is a
    per-channel weighted mean with weights summing to 1, so it commutes with a per-channel affine
    map: the graph computes the same up to float rounding, on the small image instead of the
    upsampled one (16x fewer pixels from 32 to 128 px; in the int8 graph these float ops at full
    size had cost as much as a third of its time)."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    for resize in model.graph.node:
        attributes = {a.name: a for a in resize.attribute}
        mode = attributes["mode"].s.decode() if "mode" in attributes else "nearest"
        transform = attributes.get("coordinate_transformation_mode")
        if (resize.op_type != "Resize" or mode not in ("linear", "nearest")
                or (transform is not None and transform.s.decode() == "tf_crop_and_resize")):
            continue
        after = consumers.get(resize.output[0], [])
        if len(after) != 1 or after[0].op_type != "Mul" or resize.output[0] in outputs:
            continue
        mul = after[0]
        after = consumers.get(mul.output[0], [])
        if len(after) != 1 or after[0].op_type != "Add" or mul.output[0] in outputs:
            continue
        add = after[0]
        if (mul.input[0] != resize.output[0] or add.input[0] != mul.output[0]
                or not _per_channel_constant(model, mul.input[1]) or not _per_channel_constant(model, add.input[1])):
            continue
        source, result = resize.input[0], add.output[0]
        mul.input[0] = source
        add.output[0] = result + "_before_resize"
        resize.input[0] = add.output[0]
        resize.output[0] = result
        nodes = [n for n in model.graph.node if n is not resize]
        nodes.insert(next(i for i, n in enumerate(nodes) if n is add) + 1, resize)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        stale = {mul.output[0], result, resize.output[0]}  # shapes changed: let onnx infer them again
        kept = [v for v in model.graph.value_info if v.name not in stale]
        del model.graph.value_info[:]
        model.graph.value_info.extend(kept)
        return [mul.name, add.name]
    return []


def float_nodes(model: "onnx.ModelProto") -> list[str]:
    """Nodes that stay float: the decision tail and the kNN bank product."""
    return list(dict.fromkeys(tail_nodes(model) + score_nodes(model)))


def _channel_means(session, outputs: list[str], images: np.ndarray, feeds: dict | None = None,
                   batch_size: int = 32) -> list[np.ndarray]:
    """Per-channel means (axis 1, over batch and space) of ``outputs`` over ``images``."""
    sums: list[np.ndarray] | None = None
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start : start + batch_size], dtype=np.uint8)
        values = session.run(outputs, {INPUT_NAME: batch, **(feeds or {})})
        parts = [v.reshape(v.shape[0], v.shape[1], -1).mean(axis=2).sum(axis=0, dtype=np.float64) for v in values]
        sums = parts if sums is None else [a + b for a, b in zip(sums, parts)]
    return [s / len(images) for s in sums or []]


def correct_biases(fp32: "onnx.ModelProto", int8: "onnx.ModelProto", images: np.ndarray) -> int:
    """Empirical bias correction of the QDQ graph ``int8`` (changed in place), in graph order:
    each quantised Conv's int32 bias moves by the mean difference, per output channel, between its
    output in the simulated int8 graph (earlier corrections applied) and in ``fp32``, over
    ``images``. Returns the number of corrected convolutions."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    producers = {out: node for node in int8.graph.node for out in node.output}
    inits = {init.name: init for init in int8.graph.initializer}
    fp32_outputs = {node.name: node.output[0] for node in fp32.graph.node if node.op_type == "Conv"}
    convs = []  # (conv output in int8, conv output in fp32, int32 bias initializer, bias scale)
    for node in int8.graph.node:
        bias = producers.get(node.input[2]) if node.op_type == "Conv" and len(node.input) > 2 else None
        if (bias is None or bias.op_type != "DequantizeLinear" or node.name not in fp32_outputs
                or bias.input[0] not in inits or inits[bias.input[0]].data_type != onnx.TensorProto.INT32):
            continue
        convs.append((node.output[0], fp32_outputs[node.name], bias.input[0],
                      numpy_helper.to_array(inits[bias.input[1]]).astype(np.float64)))
    if not convs:
        return 0

    def with_outputs(model: "onnx.ModelProto", names: list[str], bias_inputs: list[str] = ()) -> bytes:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        del copy.graph.output[:]
        copy.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
        for name in bias_inputs:  # overridable initializers: fed at each run
            init = inits[name]
            copy.graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.INT32, list(init.dims)))
        return copy.SerializeToString()

    options = ort.SessionOptions()
    options.log_severity_level = 3
    reference = _channel_means(ort.InferenceSession(with_outputs(fp32, [c[1] for c in convs]), options,
                                                    providers=["CPUExecutionProvider"]),
                               [c[1] for c in convs], images)
    # The simulated int8 graph (QDQ nodes run as written, no fused integer kernels): its float
    # convolution outputs are what the integer kernels compute, before requantisation.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(with_outputs(int8, [c[0] for c in convs], [c[2] for c in convs]), options,
                                   providers=["CPUExecutionProvider"])
    biases = {c[2]: numpy_helper.to_array(inits[c[2]]).astype(np.int64) for c in convs}
    for (out, _, bias_name, scale), expected in zip(convs, reference):
        feeds = {name: value.astype(np.int32) for name, value in biases.items()}
        mean = _channel_means(session, [out], images, feeds)[0]
        biases[bias_name] = np.clip(biases[bias_name] - np.round((mean - expected) / scale).astype(np.int64),
                                    np.iinfo(np.int32).min, np.iinfo(np.int32).max)
    for name, value in biases.items():
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.int32), name))
    return len(convs)


class _DropMessages(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def _find_constant(model: "onnx.ModelProto", values: np.ndarray, what: str, atol: float = 0.0) -> str:
    """The one float constant equal to ``values`` (within ``atol``, same size)."""
    from onnx import numpy_helper

    target = np.asarray(values, dtype=np.float32).ravel()
    matches = [
        init.name
        for init in model.graph.initializer
        if init.data_type == 1
        and int(np.prod(init.dims)) == target.size
        and np.allclose(numpy_helper.to_array(init).ravel(), target, rtol=0.0, atol=atol)
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


def decision_constants(fp32_path: Path, thresholds: np.ndarray, calibration_scores: np.ndarray,
                       atol: float = 0.0) -> tuple[str, str]:
    """Names of the per-class threshold and sorted calibration-score constants in an exported graph
    (``atol``: calibration scores recomputed by onnxruntime rather than the ones baked in)."""
    import onnx

    model = onnx.load(str(fp32_path))
    return (
        _find_constant(model, thresholds, "per-class thresholds"),
        _find_constant(model, np.sort(np.asarray(calibration_scores, dtype=np.float32)), "calibration scores", atol),
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
    result: "ExportResult", inputs: "ExportInputs", options: "ExportOptions", version: int,
    calibration_atol: float = 0.0, made_with: dict | None = None,
) -> Path:
    """Write `<name>-int8/<version>/` (model.onnx, manifest.json, report/) and its Triton configs.
    ``calibration_atol``: how far ``result.calibration_scores`` may be from the ones baked into the
    fp32 graph (0: they are the baked ones); ``made_with``: how the variant was made when not by
    osr-export (into the manifest's "int8" record and the report)."""
    import onnx

    from osr.export.pipeline import MODEL_FILE, REPORT_DIR, build_manifest, report_metrics, write_triton_configs

    base = result.manifest
    num_classes = len(inputs.classes)
    fp32_path = result.version_dir / base["model_file"]
    fp32_session = onnx_session(fp32_path)
    threshold_name, calibration_name = decision_constants(
        fp32_path, _thresholds_array(result.threshold, num_classes), result.calibration_scores, calibration_atol
    )

    if inputs.quantization_x is not None and len(inputs.quantization_x):
        range_images, range_source = inputs.quantization_x[:RANGE_IMAGES], "training images"
    else:
        range_images, range_source = inputs.calib_x[:RANGE_IMAGES], "calibration images (guarantee approximate)"

    name = options.name + INT8_SUFFIX
    with version_writer(options.repository, name, version, options.force) as staging:
        with tempfile.TemporaryDirectory() as scratch:
            raw_path = quantize_graph(fp32_path, Path(scratch) / "quantized.onnx", range_images, bias_correction=False)
            log.info("int8: correcting the convolutions' biases on %d %s", len(range_images), range_source)
            raw_model, fp32_model = onnx.load(str(raw_path)), onnx.load(str(fp32_path))
            corrected = correct_biases(fp32_model, raw_model, range_images)
            onnx.save(raw_model, str(raw_path))
            kept_float = float_nodes(fp32_model)
            moved = affine_before_resize(fp32_model)
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
        fp32_out = run_onnx(fp32_session, agreement_images)
        int8_out = run_onnx(onnx_session(model_path), agreement_images)
        same = int8_out["label"] == fp32_out["label"]
        n_known = 0 if inputs.test_known_x is None else len(inputs.test_known_x)
        speed_images = agreement_images[: max(64, min(len(agreement_images), 256))]
        int8_record = {
            "quantization": "onnxruntime.quantization.quantize_static, QDQ, activations uint8, "
            f"weights int8 per channel, ops {', '.join(BODY_OPS)} of the network's body; "
            f"{len(kept_float)} nodes of the decision tail (classifier head, score, kNN bank product, "
            "threshold, p-value) and the pre-processing stay float",
            "activation_ranges_from": range_source,
            "input_adapter_before_resize": bool(moved),
            "bias_correction": f"empirical, per output channel, {corrected} convolutions, on the same images",
            "decision_agreement_with_fp32": float(np.mean(same)),
            "agreement_images": int(len(agreement_images)),
            "decision_agreement_known_test": float(np.mean(same[:n_known])) if n_known else None,
            "decision_agreement_unknown_test": float(np.mean(same[n_known:])) if len(same) > n_known else None,
            "label_agreement_with_fp32": float(np.mean(int8_out["logits"].argmax(1) == fp32_out["logits"].argmax(1))),
            "score_difference_std": float(np.std(int8_out["score"] - fp32_out["score"])),
            "file_bytes_fp32": fp32_path.stat().st_size,
            "file_bytes_int8": model_path.stat().st_size,
            "images_per_second_fp32": images_per_second(fp32_path, speed_images),
            "images_per_second_int8": images_per_second(model_path, speed_images),
            "speed_measured_with": "onnxruntime CPUExecutionProvider, batch 32, during the export "
            "(not a benchmark: see docs/performance.md)",
            "fp32_threshold": result.threshold.value,
            **({"made_with": made_with} if made_with else {}),
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
                   **{key: base[key] for key in ("knn", "fusion", "score_selection") if key in base}},
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
            f"| bias correction | {record.get('bias_correction', 'none')} |\n"
            + ("| input adapter | its per-channel scale and shift run before the in-graph upsampling (equal up "
               "to float rounding, on fewer pixels) |\n" if record.get("input_adapter_before_resize") else "")
            + f"| decisions equal to fp32 (label incl. unknown) | {record['decision_agreement_with_fp32']:.4f} "
            f"on {record['agreement_images']} images |\n"
            + "".join(f"| {label} | {record[key]:.4f} |\n" for key, label in (
                ("decision_agreement_known_test", "decisions equal to fp32, known-class test images"),
                ("decision_agreement_unknown_test", "decisions equal to fp32, unknown-class test images"),
                ("label_agreement_with_fp32", "argmax class equal to fp32"),
                ("score_difference_std", "standard deviation of int8 score - fp32 score"))
                if record.get(key) is not None)
            + "".join(f"| file size {kind} | {record[key] / 1e6:.1f} MB |\n" for key, kind in (
                ("file_bytes_fp32", "fp32"), ("file_bytes_int8", "int8")) if key in record)
            + f"| images/s fp32 | {record['images_per_second_fp32']:.0f} |\n"
            f"| images/s int8 | {record['images_per_second_int8']:.0f} |\n"
            f"| measured with | {record['speed_measured_with']} |\n"
            f"| threshold fp32 -> int8 (re-calibrated) | {record['fp32_threshold']:.5f} -> {int8_threshold:.5f} |\n")
        if record.get("made_with"):
            made = record["made_with"]
            f.write(f"\nThis variant was made from {made['from']} without the training checkpoint, with:\n\n"
                    f"```bash\n{made['command']}\n```\n")
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


def _baked_calibration_scores(fp32_path: Path, n_calibration: int) -> np.ndarray:
    """The sorted calibration scores baked into an exported graph: its one float constant of
    ``n_calibration`` sorted values (the p-value's comparison set)."""
    import onnx
    from onnx import numpy_helper

    found = [numpy_helper.to_array(init).ravel() for init in onnx.load(str(fp32_path)).graph.initializer
             if init.data_type == 1 and int(np.prod(init.dims)) == n_calibration]
    found = [values for values in found if np.all(np.diff(values) >= 0)]
    if len(found) != 1:
        raise RuntimeError(f"expected one sorted constant of {n_calibration} calibration scores in {fp32_path}, "
                           f"found {len(found)}")
    return found[0]


def int8_from_repository(
    repository: Path,
    name: str,
    version: int | None = None,
    data=None,
    data_root: Path | None = None,
    force: bool = False,
    command: str | None = None,
    tolerance: float = 1e-4,
) -> Path:
    """Write `<name>-int8/<version>/` beside an exported model, without its training checkpoint:
    the fp32 model.onnx is quantised (as `osr-export --int8` does after its fp32 export) on
    training images of the data the manifest's training config rebuilds (``data``: an
    osr.train.data.OpenSetData, else rebuilt under ``data_root``), and re-calibrated on its
    calibration images, which must be those the fp32 model was calibrated on: the fp32 graph's
    scores of them must equal the scores baked into it (within ``tolerance``), else nothing is
    written. Returns the variant's version folder."""
    from osr.export.manifest import load_manifest, resolve_version_dir
    from osr.export.pipeline import ExportInputs, ExportOptions, ExportResult, render_triton_configs
    from osr.export.repository import check_compatible, check_model_configs, check_version_free

    repository = Path(repository)
    version_dir = resolve_version_dir(repository, name, version)
    base = load_manifest(version_dir)
    name, version = base["name"], int(base["version"])
    provenance = base.get("provenance") or {}
    if data is None:
        from osr.train.data import open_set_from_config

        config = provenance.get("training_config")
        if not config:
            raise ValueError(f"{version_dir}: the manifest has no training config to rebuild the data from")
        data = open_set_from_config(config, data_root=data_root)
    if list(data.classes) != list(base["classes"]) or int(data.image_size) != int(base["image_size"]):
        raise ValueError(f"the rebuilt data ({data.classes}, {data.image_size} px) is not the model's "
                         f"({base['classes']}, {base['image_size']} px)")
    record = base["threshold"]
    threshold = conformal.ConformalThreshold(
        value=record["value"], target_false_rejection=record["target_false_rejection"], method=record["method"],
        n_calibration=record["n_calibration"], rank=record["rank"], confidence=record.get("confidence"),
        per_class=None if record.get("per_class") is None else tuple(record["per_class"]),
        per_class_n=None if record.get("per_class_n_calibration") is None else tuple(record["per_class_n_calibration"]))

    fp32_path = version_dir / base["model_file"]
    baked = _baked_calibration_scores(fp32_path, int(record["n_calibration"]))
    rebuilt = np.sort(run_onnx(onnx_session(fp32_path), data.calib_x)["score"].astype(np.float32))
    difference = float(np.max(np.abs(rebuilt - baked))) if len(rebuilt) == len(baked) else float("inf")
    if difference > tolerance:
        raise ValueError(f"the rebuilt calibration images are not those {name} version {version} was calibrated on "
                         f"({len(rebuilt)} images, largest score difference {difference:.3g} > {tolerance:g}); "
                         "check the data root and the dataset version")
    log.info("calibration images checked against the graph's baked scores (largest difference %.2g)", difference)

    knn = base.get("knn") or {}
    options = ExportOptions(
        repository=repository, name=name, version=version, alpha=float(record["target_false_rejection"]),
        confidence=record.get("confidence"), per_class=record.get("per_class") is not None,
        score_function=base["score_function"], int8=True, force=force, reference=False,
        **({"knn_k": int(knn["k"]), "knn_bank_per_class": int(knn["bank_per_class"])} if knn else {}),
    )
    variant = name + INT8_SUFFIX
    check_version_free(repository, variant, version, force)
    check_compatible(repository, variant, list(base["classes"]), base["inputs"], version, force)
    configs = render_triton_configs({**base, "name": variant}, options)
    if configs is not None:
        check_model_configs(repository / variant, *configs, force=force)

    from osr.export.cli import _sample

    inputs = ExportInputs(
        model=None, classes=list(base["classes"]), image_size=int(base["image_size"]),
        mean=list(base["normalize"]["mean"]), std=list(base["normalize"]["std"]),
        calib_x=data.calib_x, calib_y=np.asarray(data.calib_y),
        test_known_x=data.test_known_x, test_known_y=np.asarray(data.test_known_y),
        test_unknown_x=data.test_unknown_x, quantization_x=_sample(data.train_x, RANGE_IMAGES, seed=0),
        provenance=provenance,
    )
    result = ExportResult(version_dir=version_dir, manifest=base, threshold=threshold, calibration_scores=baked)
    made_with = {"from": f"{name} version {version} (model.onnx sha256 {base['sha256']})",
                 "command": command or f"python -m osr.export.int8 --repository {repository} --model {name} "
                                       f"--version {version}",
                 "calibration_check_max_score_difference": difference}
    return export_int8_variant(result, inputs, options, version, made_with=made_with)


def main(argv: list[str] | None = None) -> int:
    """``python -m osr.export.int8``: the int8 variant of a model already in a repository."""
    import argparse
    import shlex
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m osr.export.int8",
        description="Write <model>-int8/<version>/ beside an exported model without its training checkpoint: "
                    "static int8 quantisation of its model.onnx (the network's body; pre-processing, head, "
                    "score and kNN bank product stay float) on training images of the data its manifest's "
                    "training config rebuilds, bias correction, and a threshold re-calibrated on the same "
                    "calibration images (checked against the scores baked into the graph). "
                    "With the checkpoint, osr-export --int8 does the same in one go.")
    parser.add_argument("--repository", type=Path, required=True, help="model repository (e.g. model_repository)")
    parser.add_argument("--model", required=True, help="model name in the repository (e.g. cifar10-lite0)")
    parser.add_argument("--version", type=int, default=None, help="version to quantise (default: the newest)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="where the training config's dataset lives (default: the config's data_root)")
    parser.add_argument("--force", action="store_true", help="replace an existing <model>-int8/<version>")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="osr.export.int8: %(message)s")
    logging.getLogger("osr").setLevel(logging.INFO)
    words = ["python", "-m", "osr.export.int8", *(sys.argv[1:] if argv is None else argv)]
    try:
        path = int8_from_repository(args.repository, args.model, args.version, data_root=args.data_root,
                                    force=args.force, command=shlex.join(words))
    except (ValueError, FileExistsError, RuntimeError) as error:
        print(f"osr.export.int8: error: {error}", file=sys.stderr)
        return 2
    manifest = json.loads((path / "manifest.json").read_text())
    record, metrics = manifest["int8"], manifest.get("metrics", {})
    print(f"wrote {path}: decisions equal to fp32 on {record['decision_agreement_with_fp32']:.2%} of "
          f"{record['agreement_images']} test images; AUROC {metrics.get('auroc', float('nan')):.4f}; "
          f"threshold {record['fp32_threshold']:.5f} -> {manifest['threshold']['value']:.5f}; "
          f"{record['file_bytes_int8'] / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
