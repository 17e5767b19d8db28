"""osr-export: checkpoint -> calibrated ONNX decision graph in a Triton-style model repository.

    osr-export runs/<run>/checkpoint.pt --repository exports --alpha 0.05

Writes <repository>/<name>/<version>/{model.onnx, manifest.json, report/} atomically plus
<repository>/<name>/config.pbtxt and configs/cpu.pbtxt; with --int8 also the `<name>-int8`
model, with --tensorrt the `<name>-trt` model (TensorRT engine). The repository defaults to
./exports, never to the bundled ./model_repository; nothing that exists is changed without
--force (see osr.export.repository).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

# The score names without torch (osr.export.graph has the same tuple; tests/test_cli_help.py checks),
# so --help and argument errors answer at once.
from osr.train.choices import EXPORT_SCORES as SCORE_FUNCTIONS
from osr.train.choices import KNN_DEFAULT_BANK_PER_CLASS as DEFAULT_BANK_PER_CLASS
from osr.train.choices import KNN_DEFAULT_K as DEFAULT_K

log = logging.getLogger("osr.export")

DEFAULT_REPOSITORY = Path("exports")
DEFAULT_ALPHA = 0.05  # osr.train.folder_check warns when the calibration hold-out is too small for it


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="osr-export",
        description="Export a training checkpoint as an ONNX graph with a conformal unknown threshold "
        "into a Triton-style model repository.",
    )
    parser.add_argument("checkpoint", type=Path, help="checkpoint.pt, or the run folder holding it")
    parser.add_argument(
        "--repository",
        type=Path,
        default=DEFAULT_REPOSITORY,
        help=f"model repository root (default: ./{DEFAULT_REPOSITORY}, ignored by git; the bundled ./model_repository "
        "is written only when named here); serve it with osr-serve --model-repository DIR --model NAME",
    )
    parser.add_argument("--name", help="model name (default: the run id); letters, digits, '_', '-', '.'")
    parser.add_argument("--version", type=int, help="version number (default: newest + 1)")
    parser.add_argument(
        "--alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help=f"target false-rejection rate for known images (default {DEFAULT_ALPHA})",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        help="PAC threshold: the false-rejection rate is <= alpha with this probability over the "
        "calibration draw (e.g. 0.9); default: plain split conformal (alpha on average)",
    )
    parser.add_argument(
        "--per-class", action="store_true", help="one threshold per predicted class (Mondrian conformal)"
    )
    parser.add_argument(
        "--score",
        choices=SCORE_FUNCTIONS + ("auto",),
        default="max_logit",
        help="known-ness score the threshold applies to (default: max_logit); knn: cosine similarity of the "
        "head's input features to the k-th nearest of a bank of training features carried in the graph "
        "(Sun et al. 2022); fused: max-logit and kNN, each standardised on half of the held-out known images, summed "
        "(the threshold set on the other half); auto: the score (and kNN k) with the best held-out-class AUROC on half of the held-out "
        "known images, the threshold set on the other half (no test image used; the guarantee stays exact)",
    )
    parser.add_argument("--knn-k", type=int, help=f"--score knn or fused: k (default {DEFAULT_K})")
    parser.add_argument(
        "--knn-bank-per-class",
        type=int,
        help=f"--score knn: training images per class in the graph's feature bank (default {DEFAULT_BANK_PER_CLASS}; "
        "the bank adds images x features x 2 bytes to model.onnx)",
    )
    parser.add_argument(
        "--knn-features",
        choices=("model", "pretrained"),
        default="model",
        help="--score knn, fused or auto: whose features the kNN part reads: the trained model's (default), or the "
        "frozen pretrained backbone the run was fine-tuned from, carried in the graph beside the model (about 2x the "
        "compute and size; keeps the pretrained novelty signal that fine-tuning on little data loses)",
    )
    parser.add_argument("--int8", action="store_true", help="also write a statically quantised <name>-int8 model")
    parser.add_argument(
        "--tensorrt", action="store_true", help="also build a TensorRT engine as <name>-trt (needs TensorRT and a GPU)"
    )
    parser.add_argument("--tensorrt-fp16", action="store_true", help="FP16 for the TensorRT engine / accelerator")
    parser.add_argument(
        "--tensorrt-accelerator",
        action="store_true",
        help="config.pbtxt: run the ONNX model with onnxruntime's TensorRT accelerator inside Triton",
    )
    parser.add_argument("--max-batch-size", type=int, default=64, help="Triton max_batch_size (default 64)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="allow changing what exists: replace an existing version, add a version whose classes or input "
        "differ from the model's newest version, rewrite the model's config.pbtxt / configs/cpu.pbtxt "
        "(without it each is refused before any work)",
    )
    parser.add_argument("--data-root", type=Path, help="dataset root (default: the one in the training config)")
    parser.add_argument("--no-report", action="store_true", help="skip the test-set report (faster)")
    return parser


def default_name(ckpt: dict) -> str:
    run_id = ckpt.get("run_id") or Path(ckpt.get("path", "model")).parent.name or "model"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(run_id)).strip("-.") or "model"


def _check_calibration(ckpt: dict, data) -> None:
    # The calibration images must be exactly those the training run held out, or the
    # guarantee silently breaks (images seen in training score higher).
    expected = np.asarray(ckpt.get("calibration_indices", []))
    actual = np.asarray(data.calib_indices)
    if len(actual) == 0:
        raise ValueError("the data has no calibration images (calib_fraction 0 in the training config?)")
    if expected.size and not np.array_equal(np.sort(expected), np.sort(actual)):
        raise ValueError(
            f"the rebuilt calibration set ({len(actual)} images) differs from the checkpoint's "
            f"calibration_indices ({len(expected)}); check --data-root and the dataset version"
        )


def _sample(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    if len(images) <= count:
        return images
    return images[np.sort(np.random.default_rng(seed).choice(len(images), count, replace=False))]


def inputs_from_checkpoint(ckpt: dict, data_root: Path | None):
    """ExportInputs from a loaded checkpoint and the data rebuilt from its config."""
    import torch

    from osr.export.manifest import sha256_file
    from osr.export.pipeline import ExportInputs, config_digest
    from osr.train.checkpoint import model_from_checkpoint
    from osr.train.data import open_set_from_config

    config = dict(ckpt["config"])
    data = open_set_from_config(config, data_root=data_root)
    _check_calibration(ckpt, data)
    if list(data.classes) != list(ckpt["classes"]):
        raise ValueError(f"classes of the rebuilt data {data.classes} differ from the checkpoint's {ckpt['classes']}")
    if data.image_size != ckpt["image_size"]:
        raise ValueError(f"rebuilt data has image_size {data.image_size}, checkpoint {ckpt['image_size']}")
    path = Path(ckpt.get("path", ""))
    provenance = {
        "run_id": ckpt.get("run_id"),
        "checkpoint": str(path),
        "checkpoint_sha256": sha256_file(path) if path.is_file() else None,
        "epoch": ckpt.get("epoch"),
        "config_digest": config_digest(config),
        "dataset": config.get("dataset"),
        "split": config.get("split"),
        "method": config.get("method"),
        "mix": config.get("mix"),
        "seed": config.get("seed"),
        "student": dict(ckpt["model_args"]),
        "teacher": ckpt.get("teacher"),
        "git_commit": ckpt.get("git_commit"),
        "training_metrics": ckpt.get("metrics"),
        "training_config": config,
        "torch_threads": torch.get_num_threads(),
    }
    return ExportInputs(
        model=model_from_checkpoint(ckpt),
        classes=list(ckpt["classes"]),
        image_size=int(ckpt["image_size"]),
        mean=[float(v) for v in ckpt["normalize"]["mean"]],
        std=[float(v) for v in ckpt["normalize"]["std"]],
        calib_x=data.calib_x,
        calib_y=np.asarray(data.calib_y),
        test_known_x=data.test_known_x,
        test_known_y=np.asarray(data.test_known_y),
        test_unknown_x=data.test_unknown_x,
        quantization_x=_sample(data.train_x, 256, seed=0),
        train_x=data.train_x,
        train_y=np.asarray(data.train_y),
        provenance=provenance,
    )


def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if not 0.0 < args.alpha < 1.0:
        parser.error(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.confidence is not None and not 0.0 < args.confidence < 1.0:
        parser.error(f"--confidence must be in (0, 1), got {args.confidence}")
    if args.version is not None and args.version < 1:
        parser.error(f"--version must be a positive integer, got {args.version}")
    if args.name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name):
        parser.error(f"--name {args.name!r}: use letters, digits, '_', '-' and '.' only")
    if args.tensorrt_fp16 and not (args.tensorrt or args.tensorrt_accelerator):
        parser.error("--tensorrt-fp16 needs --tensorrt or --tensorrt-accelerator")
    if args.max_batch_size < 1:
        parser.error("--max-batch-size must be >= 1")
    knn_flags = (args.knn_k, args.knn_bank_per_class)
    if args.knn_features != "model" and args.score not in ("knn", "fused", "auto"):
        parser.error("--knn-features applies to --score knn, fused or auto")
    if args.score == "auto" and args.knn_k is not None:
        parser.error("--score auto chooses --knn-k itself; leave --knn-k out")
    if args.score not in ("knn", "fused", "auto") and knn_flags != (None, None):
        parser.error("--knn-k and --knn-bank-per-class apply to --score knn only (and --knn-bank-per-class to --score "
                     "auto)")
    if any(value is not None and value < 1 for value in knn_flags):
        parser.error("--knn-k and --knn-bank-per-class must be >= 1")


def run(args: argparse.Namespace) -> Path:
    """The export for parsed arguments; returns the new version folder."""
    from osr.export.tensorrt import require_tensorrt

    if args.tensorrt:
        require_tensorrt()  # before loading anything

    from osr.export.pipeline import ExportOptions, export_to_repository, preflight
    from osr.export.repository import next_version
    from osr.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    name = args.name or default_name(ckpt)
    version = args.version or next_version(args.repository, name)
    options = ExportOptions(
        repository=args.repository,
        name=name,
        version=version,
        alpha=args.alpha,
        confidence=args.confidence,
        per_class=args.per_class,
        score_function=args.score,
        knn_k=args.knn_k or DEFAULT_K,
        knn_bank_per_class=args.knn_bank_per_class or DEFAULT_BANK_PER_CLASS,
        knn_features=args.knn_features,
        int8=args.int8,
        tensorrt=args.tensorrt,
        tensorrt_fp16=args.tensorrt_fp16,
        tensorrt_accelerator=args.tensorrt_accelerator,
        force=args.force,
        max_batch_size=args.max_batch_size,
        report=not args.no_report,
    )
    preflight(list(ckpt["classes"]), int(ckpt["image_size"]), options, version)  # before the data is loaded
    log.info("exporting %s as %s version %d into %s", args.checkpoint, name, version, args.repository)
    inputs = inputs_from_checkpoint(ckpt, args.data_root)
    result = export_to_repository(inputs, options)
    return result.version_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(args, parser)
    logging.basicConfig(level=logging.WARNING, format="osr-export: %(message)s")
    logging.getLogger("osr").setLevel(logging.INFO)  # our progress lines, not the exporter's chatter
    from osr.export.manifest import ManifestError
    from osr.export.tensorrt import TensorRTUnavailable

    expected_errors: tuple[type[BaseException], ...] = (ValueError, FileExistsError, ManifestError, TensorRTUnavailable)
    try:
        from osr.export.graph import ParityError
        from osr.train.checkpoint import CheckpointError
        from osr.train.data import DataError

        expected_errors += (ParityError, CheckpointError, DataError)
    except ImportError:
        pass
    try:
        version_dir = run(args)
    except expected_errors as error:
        raise SystemExit(f"osr-export: error: {error}") from None
    say_false_rejection(version_dir)
    log.info("serve it: osr-serve --model-repository %s --model %s (or make serve REPOSITORY=%s MODEL=%s)",
             args.repository, version_dir.parent.name, args.repository, version_dir.parent.name)
    print(version_dir)
    return 0


def say_false_rejection(version_dir: Path) -> None:
    """The realised false-rejection rate against the one band to read, on the console (a note when outside)."""
    import json

    from osr.export.report import band_note

    report = version_dir / "report" / "report.json"
    if not report.is_file():  # --no-report
        return
    record = json.loads(report.read_text(encoding="utf-8"))["false_rejection"]
    note = band_note(record)
    (log.warning if note.startswith("note: ") else log.info)("%s (%s)", note, report.with_suffix(".md"))


if __name__ == "__main__":
    sys.exit(main())
