"""The deployable graph: uint8 NHWC images in; logits, score, label and conformal p-value out.

Everything a client could get wrong (cast, scaling, normalisation, layout, score function,
threshold) lives inside the graph, so onnxruntime, Triton and the batch CLI decide alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from osr.export.feature_bank import knn_similarity
from osr.export.manifest import INPUT_NAME, OUTPUT_NAMES
from osr.train.choices import FEATURE_SCORES, KNN_DEFAULT_K

LOGIT_SCORES: tuple[str, ...] = ("max_logit", "msp", "energy")
SCORE_FUNCTIONS: tuple[str, ...] = LOGIT_SCORES + FEATURE_SCORES  # = osr.train.choices.EXPORT_SCORES
OPSET = 18
PARITY_TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """The exported ONNX graph disagrees with the torch graph beyond tolerance."""


def torch_known_score(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Torch twin of osr.train.metrics.known_score (higher = more known)."""
    if kind == "max_logit":
        return logits.max(dim=1).values
    if kind == "msp":
        return torch.softmax(logits, dim=1).max(dim=1).values
    if kind == "energy":
        return torch.logsumexp(logits, dim=1)
    raise ValueError(f"unknown logit score {kind!r}; valid: {', '.join(LOGIT_SCORES)}")


class OsrGraph(nn.Module):
    """Wrap a trained model (normalised float NCHW -> logits) into the exported decision graph.

    forward(images uint8 [N, S, S, 3] RGB) -> (logits [N, K] float32, score [N] float32,
    label [N] int64 (argmax, or -1 when score < the argmax class's threshold),
    p_value [N] float32 = (1 + #{calibration scores <= score}) / (n_cal + 1)).

    score_function "knn" needs the model cut at its classifier head (osr.export.feature_bank.split_head):
    ``model`` is then the body (images -> features) and ``head`` the features -> logits layer; the
    score is the features' cosine similarity to their ``knn_k``-th nearest row of ``feature_bank``
    (unit rows, stored as float16). "fused" is cut the same way; its score is
    (max logit - m1) / s1 + (kNN similarity - m2) / s2 with ``fusion`` = (m1, s1, m2, s2), the two
    parts' means and standard deviations on held-out known images. With ``knn_body`` (e.g. the frozen
    pretrained backbone the model was fine-tuned from) the kNN part reads that network's features
    and ``feature_bank`` holds them. The others read the logits.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int,
        threshold: float | Sequence[float],
        calibration_scores: Sequence[float] | np.ndarray,
        score_function: str = "max_logit",
        head: nn.Module | None = None,
        feature_bank: np.ndarray | None = None,
        knn_k: int = KNN_DEFAULT_K,
        fusion: Sequence[float] | None = None,
        knn_body: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if score_function not in SCORE_FUNCTIONS:
            raise ValueError(f"unknown score function {score_function!r}; valid: {', '.join(SCORE_FUNCTIONS)}")
        self.model = model.eval()
        self.score_function = score_function
        self.num_classes = num_classes
        self.head = head.eval() if head is not None else None
        self.knn_k = int(knn_k)
        thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float32), (num_classes,)).copy()
        calibration = np.sort(np.asarray(calibration_scores, dtype=np.float32).ravel())
        if calibration.size == 0:
            raise ValueError("calibration_scores is empty; the p-value needs calibration scores")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("class_thresholds", torch.from_numpy(thresholds))
        self.register_buffer("calibration_scores", torch.from_numpy(calibration))
        if (score_function in FEATURE_SCORES) != (head is not None):
            raise ValueError(f"score function {score_function}: the feature scores ({', '.join(FEATURE_SCORES)}) need "
                             "the model split at its head (model = body, head = ...), and only they take a head")
        if (score_function == "fused") != (fusion is not None):
            raise ValueError("score function fused needs fusion = (m1, s1, m2, s2), and only fused takes it")
        if fusion is not None:
            m1, s1, m2, s2 = (float(v) for v in fusion)
            if not (s1 > 0 and s2 > 0):
                raise ValueError(f"fusion scales must be positive, got {s1} and {s2}")
            self.register_buffer("fusion", torch.tensor([m1, s1, m2, s2], dtype=torch.float32))
        if head is not None:
            if feature_bank is None or len(feature_bank) == 0:
                raise ValueError("score function knn needs a feature bank (osr.export.feature_bank.build_bank)")
            if not 1 <= self.knn_k <= len(feature_bank):
                raise ValueError(f"--knn-k {self.knn_k} is larger than the feature bank ({len(feature_bank)} training "
                                 "images: some classes have fewer than --knn-bank-per-class); lower --knn-k")
            self.register_buffer("feature_bank", torch.from_numpy(np.asarray(feature_bank, dtype=np.float16)))
        # knn_body: the kNN score reads another network's features (the frozen pretrained backbone), not the body's
        self.knn_body = knn_body.eval() if knn_body is not None else None

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> the model's normalised float NCHW input."""
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.normalise(images)
        if self.head is None:
            logits = self.model(x)
            score = torch_known_score(logits, self.score_function)
        else:
            features = self.model(x)
            logits = self.head(features)
            knn_features = features if self.knn_body is None else self.knn_body(x)
            score = knn_similarity(knn_features, self.feature_bank, self.knn_k)
            if self.score_function == "fused":
                f = self.fusion
                score = (logits.max(dim=1).values - f[0]) / f[1] + (score - f[2]) / f[3]
        predicted = logits.argmax(dim=1)
        unknown = score < self.class_thresholds[predicted]
        label = torch.where(unknown, torch.full_like(predicted, -1), predicted)
        # A comparison-sum instead of searchsorted: it exports to plain ONNX ops everywhere.
        at_or_below = (self.calibration_scores.unsqueeze(0) <= score.unsqueeze(1)).sum(dim=1)
        n_cal = self.calibration_scores.shape[0]
        p_value = (at_or_below.to(torch.float32) + 1.0) / float(n_cal + 1)
        return logits, score, label, p_value


def export_onnx(graph: OsrGraph, path: Path, image_size: int) -> Path:
    """Export with the torch.export-based (dynamo) exporter, opset 18, dynamic batch; check it."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = graph.eval()
    # Batch 2 for tracing so the batch dimension is not specialised to 1.
    example = torch.zeros((2, image_size, image_size, 3), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"images": {0: batch}},
            optimize=True,
            verify=False,
            report=False,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    model_proto = onnx.load(str(path))
    onnx.checker.check_model(model_proto, full_check=True)
    return path


def onnx_session(path: Path, providers: Sequence[str] | None = None):
    """An onnxruntime InferenceSession on CPU unless providers are named."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))


def run_onnx(session, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Run the exported graph over uint8 NHWC images in batches; outputs by name."""
    names = [output.name for output in session.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start : start + batch_size], dtype=np.uint8)
        for name, value in zip(names, session.run(names, {INPUT_NAME: batch})):
            parts[name].append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


def run_torch(graph: OsrGraph, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Run the torch graph over uint8 NHWC images in batches; outputs by name."""
    parts: list[tuple[torch.Tensor, ...]] = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            parts.append(graph.eval()(torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))))
    return {name: torch.cat([part[i] for part in parts]).numpy() for i, name in enumerate(OUTPUT_NAMES)}


def _near_decision_boundary(graph: OsrGraph, outputs: dict[str, np.ndarray], tolerance: float) -> np.ndarray:
    """Images whose torch score is within `tolerance` of its class threshold, or whose two top
    logits are within `tolerance` of each other."""
    logits = np.asarray(outputs["logits"], dtype=np.float64)
    if len(logits) == 0:
        return np.zeros(0, dtype=bool)
    thresholds = graph.class_thresholds.detach().cpu().numpy().astype(np.float64)
    near_threshold = np.abs(outputs["score"] - thresholds[logits.argmax(axis=1)]) <= tolerance
    if logits.shape[1] < 2:
        return near_threshold
    top_two = np.sort(logits, axis=1)[:, -2:]
    return near_threshold | (top_two[:, 1] - top_two[:, 0] <= tolerance)


def verify_onnx(
    graph: OsrGraph,
    onnx_path: Path,
    images: np.ndarray,
    batch_sizes: Sequence[int] = (1, 16),
    tolerance: float = PARITY_TOLERANCE,
) -> dict:
    """Compare onnxruntime with torch on `images` at each batch size.

    Passing needs max |logits diff| <= tolerance and identical labels, except on images torch
    puts within `tolerance` of a decision boundary (score at its threshold, e.g. the calibration
    image whose score *is* the threshold, or a near-tie of the two top logits), where float
    rounding may go either way; those are counted in "boundary_label_mismatches". Returns the
    manifest's "parity" record; raises ParityError when it does not pass.
    """
    import onnxruntime as ort

    images = np.asarray(images, dtype=np.uint8)
    expected = run_torch(graph, images)
    session = onnx_session(onnx_path)
    record: dict = {
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "reference": f"torch {torch.__version__}",
        "n_images": int(len(images)),
        "batch_sizes": [int(size) for size in batch_sizes],
        "tolerance_logits": tolerance,
        "max_abs_diff_logits": 0.0,
        "max_abs_diff_score": 0.0,
        "max_abs_diff_p_value": 0.0,
        "label_mismatches": 0,
        "boundary_label_mismatches": 0,
    }
    boundary = _near_decision_boundary(graph, expected, tolerance)
    for batch_size in batch_sizes:
        actual = run_onnx(session, images, batch_size=batch_size)
        for name in ("logits", "score", "p_value"):
            diff = float(np.max(np.abs(actual[name].astype(np.float64) - expected[name]))) if len(images) else 0.0
            record[f"max_abs_diff_{name}"] = max(record[f"max_abs_diff_{name}"], diff)
        mismatch = actual["label"] != expected["label"]
        record["label_mismatches"] = max(record["label_mismatches"], int(np.sum(mismatch & ~boundary)))
        record["boundary_label_mismatches"] = max(
            record["boundary_label_mismatches"], int(np.sum(mismatch & boundary))
        )
    record["passed"] = bool(record["max_abs_diff_logits"] <= tolerance and record["label_mismatches"] == 0)
    if not record["passed"]:
        raise ParityError(
            f"onnxruntime disagrees with torch: max |logits diff| {record['max_abs_diff_logits']:.3g} "
            f"(tolerance {tolerance}), {record['label_mismatches']} label mismatch(es)"
        )
    return record

