"""One export: calibrate, build the decision graph, export + verify ONNX, report, manifest,
Triton configs, optional int8 / TensorRT variants, all written atomically into the repository.

`export_to_repository` takes in-memory inputs (a model and uint8 image arrays) so the CLI and
the test fixture share the same code path.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import platform
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from osr.export import conformal
from osr.export.feature_bank import build_bank, split_head
from osr.export.graph import OsrGraph, export_onnx, run_torch, verify_onnx
from osr.export.manifest import (
    INT8_SUFFIX,
    RESIZE_RULE,
    SCHEMA_VERSION,
    TENSORRT_SUFFIX,
    input_specs,
    output_specs,
    sha256_file,
    write_manifest,
)
from osr.export.repository import (
    check_compatible,
    check_model_configs,
    check_version_free,
    next_version,
    version_writer,
    write_model_configs,
)
from osr.train.choices import FEATURE_SCORES, KNN_DEFAULT_BANK_PER_CLASS, KNN_DEFAULT_K

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
REPORT_DIR = "report"


@dataclass
class ExportInputs:
    """What an export needs, independent of where it came from (checkpoint or test fixture)."""

    model: nn.Module
    classes: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    calib_x: np.ndarray  # uint8 [N, S, S, 3], known-class images never trained on
    calib_y: np.ndarray
    test_known_x: np.ndarray | None = None
    test_known_y: np.ndarray | None = None
    test_unknown_x: np.ndarray | None = None
    quantization_x: np.ndarray | None = None  # training images for int8 activation ranges
    train_x: np.ndarray | None = None  # training images (and labels) for the kNN score's feature bank
    train_y: np.ndarray | None = None
    provenance: dict = field(default_factory=dict)


@dataclass
class ExportOptions:
    repository: Path
    name: str
    version: int | None = None  # None: next free version
    alpha: float = 0.05
    confidence: float | None = None  # None: split conformal; else PAC with this confidence
    per_class: bool = False
    score_function: str = "max_logit"  # or "auto": chosen on held-out known images (select_score)
    auto_score: bool = False  # score_function was chosen by --score auto (the rebuild command says auto)
    fusion: tuple[float, float, float, float] | None = None  # fused: set by select_score on the selection part
    knn_features: str = "model"  # knn / fused: "model" (the trained network's) or "pretrained" (frozen_body)
    knn_k: int = KNN_DEFAULT_K
    knn_bank_per_class: int = KNN_DEFAULT_BANK_PER_CLASS
    int8: bool = False
    tensorrt: bool = False
    tensorrt_fp16: bool = False
    tensorrt_accelerator: bool = False  # config.pbtxt: ORT's TensorRT accelerator inside Triton
    force: bool = False
    max_batch_size: int = 64
    parity_images: int = 64
    report: bool = True
    reference: bool = True  # the frozen-pretrained probe beside the model in the report (osr.export.probe)
    reference_features: Any = None  # replaces the probe's pretrained backbone (tests): uint8 NHWC -> features


@dataclass
class ExportResult:
    version_dir: Path
    manifest: dict
    variant_dirs: dict[str, Path] = field(default_factory=dict)
    threshold: conformal.ConformalThreshold | None = None
    calibration_scores: np.ndarray | None = None  # as baked into the graph


def versions_record() -> dict:
    """Library versions the export ran with (manifest "versions")."""
    import onnx
    import onnxruntime

    import osr

    record = {
        "osr": getattr(osr, "__version__", None),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
    try:
        import onnxscript

        record["onnxscript"] = onnxscript.__version__
    except ImportError:
        pass
    return record


def config_digest(config: dict) -> str:
    """sha256 of the training config as canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def score_parts(model: nn.Module, inputs: ExportInputs, options: ExportOptions) -> dict[str, Any]:
    """OsrGraph's score arguments: the score function, and for knn the model cut at its head and
    the feature bank of the training images (features computed exactly as the graph does)."""
    if options.score_function not in FEATURE_SCORES:
        return {"model": model, "score_function": options.score_function}
    if inputs.train_x is None or inputs.train_y is None:
        raise ValueError("--score knn needs the run's training images for its feature bank")
    body, head, _ = feature_extractor(model, inputs)
    knn_body, features_of = knn_feature_extractor(model, inputs, options)
    log.info("building the kNN feature bank (up to %d training images per class, %s features)",
             options.knn_bank_per_class, options.knn_features)
    bank = build_bank(features_of, inputs.train_x, inputs.train_y, options.knn_bank_per_class)
    log.info("kNN bank: %d x %d float16 features, %.1f MB inside model.onnx", *bank.shape, bank.nbytes / 1e6)
    parts = {"model": body, "score_function": options.score_function, "head": head, "feature_bank": bank,
             "knn_k": options.knn_k, "knn_body": knn_body}
    if options.score_function == "fused":
        if options.fusion is None:
            raise ValueError("--score fused needs its fusion statistics (select_score computes them)")
        parts["fusion"] = tuple(options.fusion)
    return parts


def feature_extractor(model: nn.Module, inputs: ExportInputs):
    """(body, head, features_of): the model cut at its classifier head, and uint8 NHWC batch -> the
    head's input features, normalised exactly as the graph does."""
    probe = OsrGraph(model, inputs.mean, inputs.std, len(inputs.classes), 0.0, [0.0])
    body, head = split_head(model, probe.normalise(torch.from_numpy(inputs.calib_x[:2])))
    return body, head, lambda batch: body(probe.normalise(batch))


def knn_feature_extractor(model: nn.Module, inputs: ExportInputs, options: ExportOptions):
    """(knn_body, features_of) for the kNN part: (None, the model's head input) by default; with
    --knn-features pretrained, the frozen pretrained body and its features."""
    if options.knn_features != "pretrained":
        return None, feature_extractor(model, inputs)[2]
    body = frozen_body(model, inputs)
    probe = OsrGraph(model, inputs.mean, inputs.std, len(inputs.classes), 0.0, [0.0])
    return body, lambda batch: body(probe.normalise(batch))


def frozen_body(model: nn.Module, inputs: ExportInputs) -> nn.Module:
    """--knn-features pretrained: the network the run was fine-tuned from, with its pretrained weights
    (same architecture and input adapter as ``model``), cut at its head."""
    from osr.train.config import TrainConfig
    from osr.train.finetune import apply_pretrained

    config = dict(inputs.provenance.get("training_config") or {})
    if not config.get("pretrained"):
        raise ValueError("--knn-features pretrained needs a run fine-tuned from pretrained weights (--pretrained)")
    known = set(TrainConfig.__dataclass_fields__)
    cfg = TrainConfig(**{k: v for k, v in config.items() if k in known})
    frozen = copy.deepcopy(model)
    apply_pretrained(frozen, cfg)
    body, _, _ = feature_extractor(frozen.eval(), inputs)
    return body


@torch.no_grad()
def select_score(model: nn.Module, inputs: ExportInputs, options: ExportOptions
                 ) -> tuple[ExportInputs, ExportOptions, dict]:
    """--score auto: choose the score on a selection part of the held-out known images
    (osr.export.score_selection); the inputs keep only the calibration part for the threshold."""
    from osr.export.feature_bank import knn_similarity, pick_per_class
    from osr.export.score_selection import choose_score, fusion_stats, split_selection

    if inputs.train_x is None or inputs.train_y is None:
        raise ValueError("--score auto needs the run's training images (the kNN candidates' bank)")
    _, head, model_features_of = feature_extractor(model, inputs)
    _, knn_features_of = knn_feature_extractor(model, inputs, options)

    def features(images: np.ndarray, features_of) -> np.ndarray:
        return np.concatenate([features_of(torch.from_numpy(np.ascontiguousarray(images[i:i + 256]))).float().numpy()
                               for i in range(0, len(images), 256)])

    picked = pick_per_class(np.asarray(inputs.train_y), options.knn_bank_per_class)
    train_f, held_f = features(inputs.train_x[picked], model_features_of), features(inputs.calib_x, model_features_of)
    knn_train_f, knn_held_f = train_f, held_f
    if options.knn_features == "pretrained":
        knn_train_f, knn_held_f = features(inputs.train_x[picked], knn_features_of), features(inputs.calib_x, knn_features_of)
    if options.score_function == "fused":  # the score is given: only its statistics come from the selection part
        select, keep = split_selection(np.asarray(inputs.calib_y))
        k, chosen = options.knn_k, "fused"
        record = {"method": "fused score's statistics on a selection part of the held-out known images",
                  "chosen": f"fused{k}", "n_selection": int(len(select)), "n_calibration": int(len(keep))}
    else:
        log.info("--score auto: held-out-class estimates on half of the %d held-out known images", len(inputs.calib_x))
        selection = choose_score(train_f, np.asarray(inputs.train_y)[picked], held_f, np.asarray(inputs.calib_y),
                                 knn_train_f=knn_train_f, knn_held_f=knn_held_f)
        record = selection.to_record(list(inputs.classes))
        log.info("--score auto chose %s (held-out-class AUROC %.3f; %s); the threshold uses the other %d images",
                 selection.name, selection.estimates[selection.name],
                 ", ".join(f"{k} {v:.3f}" for k, v in sorted(selection.estimates.items(), key=lambda kv: -kv[1])[1:4]),
                 len(selection.calibration_indices))
        select, keep = selection.selection_indices, selection.calibration_indices
        k, chosen = selection.knn_k or options.knn_k, selection.score_function
    fusion = None
    if chosen == "fused":
        bank = nn.functional.normalize(torch.from_numpy(knn_train_f).float(), dim=1)
        top = head(torch.from_numpy(held_f[select]).float()).max(dim=1).values.numpy()
        fusion = fusion_stats(top, knn_similarity(torch.from_numpy(knn_held_f[select]).float(), bank, k).numpy())
        record["fusion"] = list(fusion)
    inputs = replace(inputs, calib_x=inputs.calib_x[keep], calib_y=np.asarray(inputs.calib_y)[keep])
    options = replace(options, score_function=chosen, knn_k=k, fusion=fusion,
                      auto_score=options.score_function == "auto")
    return inputs, options, record


def knn_record(parts: dict[str, Any], options: ExportOptions) -> dict:
    """The manifest's "knn" entry (empty for the logit scores)."""
    if parts["score_function"] not in FEATURE_SCORES:
        return {}
    bank = parts["feature_bank"]
    record = {"knn": {"k": int(parts["knn_k"]), "bank_size": int(bank.shape[0]), "feature_dim": int(bank.shape[1]),
                      "bank_per_class": int(options.knn_bank_per_class), "bank_dtype": str(bank.dtype),
                      "bank_source": "training images of the run, drawn per class with seed 0",
                      "features": options.knn_features}}
    if "fusion" in parts:
        m1, s1, m2, s2 = parts["fusion"]
        record["fusion"] = {"max_logit_mean": m1, "max_logit_std": s1, "knn_mean": m2, "knn_std": s2,
                            "from": "the selection part of the held-out known images"}
    return record


def calibration_scores(inputs: ExportInputs, parts: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Scores (float32, as the graph computes them) and argmax classes of the calibration images."""
    probe = OsrGraph(mean=inputs.mean, std=inputs.std, num_classes=len(inputs.classes), threshold=0.0,
                     calibration_scores=[0.0], **parts)
    outputs = run_torch(probe, inputs.calib_x)
    return outputs["score"], outputs["logits"].argmax(axis=1)


def parity_sample(inputs: ExportInputs, count: int) -> np.ndarray:
    """A few calibration, known-test and unknown-test images for the torch/ONNX comparison."""
    pools = [x for x in (inputs.calib_x, inputs.test_known_x, inputs.test_unknown_x) if x is not None and len(x)]
    per_pool = max(1, count // len(pools))
    return np.concatenate([pool[:per_pool] for pool in pools])


def build_manifest(
    name: str,
    version: int,
    model_path: Path,
    inputs: ExportInputs,
    threshold: conformal.ConformalThreshold,
    score_function: str,
    metrics: dict,
    parity: dict,
    extra: dict | None = None,
) -> dict:
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": int(version),
        "model_file": model_path.name,
        "sha256": sha256_file(model_path),
        "classes": list(inputs.classes),
        "image_size": int(inputs.image_size),
        "resize": dict(RESIZE_RULE),
        "normalize": {"mean": list(inputs.mean), "std": list(inputs.std), "applied_in_graph": True},
        "inputs": input_specs(inputs.image_size),
        "outputs": output_specs(len(inputs.classes)),
        "score_function": score_function,
        "threshold": threshold.to_manifest(),
        "metrics": metrics,
        "parity": parity,
        "provenance": inputs.provenance,
        "versions": versions_record(),
    }
    manifest.update(extra or {})
    return manifest


def render_triton_configs(manifest: dict, options: ExportOptions) -> tuple[str, str] | None:
    """(config.pbtxt, configs/cpu.pbtxt) texts, or None when the renderer is not installed."""
    try:
        from osr.export.triton_config import render_config
    except ImportError:
        return None
    gpu = render_config(
        manifest,
        "gpu",
        max_batch_size=options.max_batch_size,
        tensorrt=options.tensorrt_accelerator,
        tensorrt_fp16=options.tensorrt_fp16,
    )
    return gpu, render_config(manifest, "cpu", max_batch_size=options.max_batch_size)


def write_triton_configs(model_dir: Path, manifest: dict, options: ExportOptions) -> None:
    configs = render_triton_configs(manifest, options)
    if configs is None:
        log.warning("osr.export.triton_config is missing; no config.pbtxt written for %s", model_dir)
        return
    write_model_configs(model_dir, *configs, force=options.force)


def preflight(classes: list[str], image_size: int, options: ExportOptions, version: int) -> None:
    """Everything that would make the export refuse to write, checked before any work: a taken
    version, a model whose newest version has other classes or another input, a model config
    that would change (each allowed with options.force), for the model and its variants; and a
    kNN k that no bank of these classes can hold."""
    if options.score_function == "auto" and len(classes) < 3:
        raise ValueError(f"--score auto holds each known class out in turn and needs at least 3 classes; "
                         f"this model has {len(classes)}: pick --score yourself")
    if options.score_function in FEATURE_SCORES and options.knn_k > options.knn_bank_per_class * len(classes):
        raise ValueError(f"--knn-k {options.knn_k} is larger than the feature bank can be "
                         f"({options.knn_bank_per_class} images per class x {len(classes)} classes): "
                         "lower --knn-k or raise --knn-bank-per-class")
    repository = Path(options.repository)
    inputs = input_specs(image_size)
    names = [options.name]
    if options.int8:
        names.append(options.name + INT8_SUFFIX)
    if options.tensorrt:
        names.append(options.name + TENSORRT_SUFFIX)
    for name in names:
        check_version_free(repository, name, version, options.force)
        check_compatible(repository, name, classes, inputs, version, options.force)
    # What the configs will say depends only on names, tensors and options, known now.
    outline = {"name": options.name, "version": version, "inputs": inputs, "outputs": output_specs(len(classes))}
    configs = render_triton_configs(outline, options)
    if configs is None:
        return
    check_model_configs(repository / options.name, *configs, force=options.force)
    if options.int8:
        int8 = render_triton_configs({**outline, "name": options.name + INT8_SUFFIX}, options)
        check_model_configs(repository / (options.name + INT8_SUFFIX), *int8, force=options.force)
    if options.tensorrt:
        from osr.export.triton_config import render_tensorrt_plan_config

        plan = render_tensorrt_plan_config(outline, max_batch_size=options.max_batch_size)
        check_model_configs(repository / (options.name + TENSORRT_SUFFIX), plan, None, force=options.force)


def export_to_repository(inputs: ExportInputs, options: ExportOptions) -> ExportResult:
    """Run the whole export; returns the new version folder and its manifest."""
    repository = Path(options.repository)
    version = options.version or next_version(repository, options.name)
    if options.tensorrt:
        from osr.export.tensorrt import require_tensorrt

        require_tensorrt()
    preflight(list(inputs.classes), int(inputs.image_size), options, version)

    model = inputs.model.eval()
    num_classes = len(inputs.classes)
    selection: dict = {}
    if options.score_function in ("auto", "fused"):
        inputs, options, record = select_score(model, inputs, options)
        selection = {"score_selection": record}
    parts = score_parts(model, inputs, options)
    log.info("scoring %d calibration images", len(inputs.calib_x))
    scores, predicted = calibration_scores(inputs, parts)
    threshold = conformal.calibrate(
        scores,
        options.alpha,
        confidence=options.confidence,
        predicted=predicted if options.per_class else None,
        num_classes=num_classes,
    )
    graph = OsrGraph(
        mean=inputs.mean, std=inputs.std, num_classes=num_classes, threshold=threshold.class_thresholds,
        calibration_scores=scores, **parts
    )
    result = ExportResult(
        version_dir=repository / options.name / str(version),
        manifest={},
        threshold=threshold,
        calibration_scores=scores,
    )
    with version_writer(repository, options.name, version, options.force) as staging:
        log.info("threshold %.6g (%s, alpha %s); exporting ONNX", threshold.value, threshold.method, options.alpha)
        model_path = export_onnx(graph, staging / MODEL_FILE, inputs.image_size)
        log.info("checking onnxruntime against torch")
        parity = verify_onnx(graph, model_path, parity_sample(inputs, options.parity_images))
        metrics = report_metrics(model_path, staging / REPORT_DIR, inputs, threshold, options,
                                 selection.get("score_selection"))
        manifest = build_manifest(
            options.name, version, model_path, inputs, threshold, options.score_function, metrics, parity,
            extra={**knn_record(parts, options), **selection},
        )
        write_manifest(staging, manifest)
        result.manifest = manifest

    write_triton_configs(repository / options.name, result.manifest, options)

    log.info("wrote %s", result.version_dir)
    if options.int8:
        from osr.export.int8 import export_int8_variant

        log.info("quantising to int8")
        result.variant_dirs["int8"] = export_int8_variant(result, inputs, options, version)
    if options.tensorrt:
        from osr.export.tensorrt import export_tensorrt_variant

        log.info("building the TensorRT engine")
        result.variant_dirs["tensorrt"] = export_tensorrt_variant(result, inputs, options, version)
    return result


def report_metrics(
    model_path: Path,
    report_dir: Path,
    inputs: ExportInputs,
    threshold: conformal.ConformalThreshold,
    options: ExportOptions,
    selection: dict | None = None,
) -> dict:
    if not options.report or inputs.test_known_x is None:
        return {}
    from osr.export.report import write_report

    log.info("writing the report (onnxruntime on %d known, %d unknown test images)",
             len(inputs.test_known_x), 0 if inputs.test_unknown_x is None else len(inputs.test_unknown_x))
    metrics = write_report(
        model_path,
        report_dir,
        classes=inputs.classes,
        threshold=threshold,
        test_known_x=inputs.test_known_x,
        test_known_y=inputs.test_known_y,
        test_unknown_x=inputs.test_unknown_x,
        score_function=options.score_function,
        provenance=inputs.provenance,
        score_note=score_note(options),
        export_command=export_command(inputs.provenance, options),
    )
    if selection:
        from osr.export.score_selection import markdown

        metrics["score_selection"] = selection
        with open(report_dir / "report.md", "a", encoding="utf-8") as fh:
            fh.write(markdown(selection))
    if options.reference and inputs.train_x is not None:
        add_frozen_reference(report_dir, inputs, options, metrics)
    if selection or "frozen_reference" in metrics:
        (report_dir / "report.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def add_frozen_reference(report_dir: Path, inputs: ExportInputs, options: ExportOptions, metrics: dict) -> None:
    """The frozen-pretrained probe on the same images, into metrics, report.md and the console."""
    from osr.export import probe

    reference = probe.frozen_reference(
        inputs.provenance.get("training_config") or {}, _dict(inputs.provenance.get("student")), inputs.image_size,
        inputs.train_x, inputs.train_y, inputs.calib_x, inputs.test_known_x, inputs.test_known_y,
        inputs.test_unknown_x, options.alpha, features_of=options.reference_features)
    metrics["frozen_reference"] = reference
    with open(report_dir / "report.md", "a", encoding="utf-8") as fh:
        fh.write(probe.markdown(reference, metrics))
    warning = probe.comparison(reference, metrics)
    if warning:
        log.warning("%s", warning)
    elif not reference.get("available"):
        log.info("frozen-feature reference not computed: %s", reference.get("why"))
    elif "best" in reference:
        best = reference["probes"][reference["best"]]
        log.info("frozen-feature reference (no training): AUROC %.3f; this model %.3f", best["auroc"], metrics["auroc"])


SCORE_NOTES = {
    "max_logit": "the largest logit (higher = more known)",
    "msp": "the largest softmax probability (higher = more known)",
    "energy": "logsumexp of the logits (higher = more known)",
}


def score_note(options: ExportOptions) -> str:
    """One phrase saying what the exported score is."""
    whose = ("the frozen pretrained backbone's features (the network before fine-tuning, carried in the graph)"
             if options.knn_features == "pretrained" else "the classifier head's input features")
    knn = (f"cosine similarity of {whose} to their {_ordinal(options.knn_k)} nearest "
           f"training feature (a float16 bank of up to {options.knn_bank_per_class} training images per class "
           "inside the graph; Sun et al. 2022)")
    if options.score_function == "knn":
        return knn + "; higher = more known"
    if options.score_function == "fused":
        return ("the largest logit and the " + knn + ", each standardised with its mean and standard deviation on "
                "held-out known images the threshold never saw, summed; higher = more known")
    return SCORE_NOTES[options.score_function]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def export_command(provenance: dict, options: ExportOptions) -> str:
    """The osr-export line that rebuilds this export from its checkpoint ("" when none is known)."""
    checkpoint = provenance.get("checkpoint")
    if not checkpoint:
        return ""
    path = Path(checkpoint)
    run = path.parent if path.name == "checkpoint.pt" else path
    words = ["osr-export", str(run), "--repository", str(options.repository), "--name", options.name,
             "--alpha", f"{options.alpha:g}"]
    if options.confidence is not None:
        words += ["--confidence", f"{options.confidence:g}"]
    if options.per_class:
        words.append("--per-class")
    if options.auto_score:
        words += ["--score", "auto", "--knn-bank-per-class", str(options.knn_bank_per_class)]
    elif options.score_function != "max_logit":
        words += ["--score", options.score_function]
    if options.score_function in FEATURE_SCORES and not options.auto_score:
        words += ["--knn-k", str(options.knn_k), "--knn-bank-per-class", str(options.knn_bank_per_class)]
    if options.knn_features != "model":
        words += ["--knn-features", options.knn_features]
    flags = {"--int8": options.int8, "--tensorrt": options.tensorrt, "--tensorrt-fp16": options.tensorrt_fp16,
             "--tensorrt-accelerator": options.tensorrt_accelerator}
    words += [flag for flag, on in flags.items() if on]
    if options.max_batch_size != ExportOptions.max_batch_size:
        words += ["--max-batch-size", str(options.max_batch_size)]
    return shlex.join(words)
