"""The reference every report carries: what frozen ImageNet features give with no training at all.

A user with a few hundred images per class can get a usable open-set model from a pretrained
backbone without fine-tuning it: a linear head on its pooled features (max-logit score) and a
cosine kNN score over the training features. Fine-tuning on little data can raise accuracy while
destroying the novelty signal those features carry, so the export measures the probe on the same
calibration, known-test and unknown-test images as the exported model, with its threshold set the
same way (split conformal on the calibration images at the same alpha), and warns when the trained
model separates known from unknown worse than the probe.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from osr.export import conformal
from osr.train.metrics import auroc

log = logging.getLogger(__name__)

REFERENCE_ARCH = "efficientnet_lite0"  # the backbone whose weights the pretrained extra installs
REFERENCE_WEIGHTS = "imagenet"
MIN_REFERENCE_SIZE = 96  # a scratch model's 32 px images are seen at least this large by the probe
PROBE_TRAIN_PER_CLASS = 500  # training images per class for the linear head and the kNN bank
PROBE_KNN_K = 5
PROBE_C = 0.1  # inverse L2 strength of the linear head on standardised features


class ProbeUnavailable(RuntimeError):
    """No pretrained weights for the reference; the message says how to get them."""


def reference_backbone(config: dict, model_args: dict, image_size: int) -> tuple[str, str, int]:
    """(arch, weights, input side) of the probe: the run's own pretrained backbone at the size the
    trained model sees, or EfficientNet-Lite0 at max(image size, 96) for a model trained from scratch."""
    from osr.train.pretrained import PRETRAINED_ARCHS

    arch, weights = config.get("arch"), config.get("pretrained")
    seen = (model_args.get("input") or {}).get("size") or image_size
    if weights and arch in PRETRAINED_ARCHS:
        return arch, weights, int(seen)
    return REFERENCE_ARCH, REFERENCE_WEIGHTS, max(int(seen), MIN_REFERENCE_SIZE)


def frozen_features(arch: str, weights: str, size: int) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 NHWC images -> the frozen pretrained backbone's pooled features (its head's input)."""
    from osr.train.adapter import InputAdapter
    from osr.train.pretrained import PretrainedError, build_backbone, expected_stats, head_name, load_pretrained

    net = build_backbone(arch, num_classes=2)
    try:
        load_pretrained(net, arch, weights)
    except PretrainedError as e:
        raise ProbeUnavailable(str(e)) from e
    net.set_submodule(head_name(net), nn.Identity())
    net.eval()
    mean, std = expected_stats(arch)
    adapter = InputAdapter([0.0] * 3, [1.0] * 3, mean, std, size=size)

    @torch.no_grad()
    def features(images: np.ndarray, batch_size: int = 128) -> np.ndarray:
        out = []
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).permute(0, 3, 1, 2).float() / 255
            out.append(net(adapter(x)).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    return features


def _knn(bank: np.ndarray, features: np.ndarray, k: int) -> np.ndarray:
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return np.sort(unit @ bank.T, axis=1)[:, -k]


def _decisions(calib: np.ndarray, known: np.ndarray, unknown: np.ndarray, alpha: float) -> dict:
    """AUROC, and the rates at the split-conformal threshold of the calibration scores (None when there are
    too few calibration images for alpha: the AUROC still compares)."""
    try:
        value = conformal.calibrate(calib, alpha).value
    except ValueError:
        value = None
    record = {"false_rejection": None if value is None else float(np.mean(known < value))}
    if len(unknown):
        record.update(auroc=auroc(known, unknown),
                      unknown_rejected_rate=None if value is None else float(np.mean(unknown < value)))
    return record


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def probe_scores(train_f: np.ndarray, train_y: np.ndarray, sets: dict[str, np.ndarray], k: int = PROBE_KNN_K
                 ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Known-ness scores of the feature sets ``sets`` (name -> features) under both probes, and the
    linear head's predicted classes: ({probe: {set: scores}}, {set: predictions})."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = train_f.mean(0), train_f.std(0) + 1e-6
    head = LogisticRegression(C=PROBE_C, max_iter=3000).fit((train_f - mu) / sd, train_y)
    logits = {name: head.decision_function((f - mu) / sd).reshape(len(f), -1) for name, f in sets.items()}
    if len(head.classes_) == 2:  # sklearn's binary head gives one margin: the two logits are -m/2, m/2
        logits = {name: np.stack([-m[:, 0] / 2, m[:, 0] / 2], 1) for name, m in logits.items()}
    bank = train_f / np.maximum(np.linalg.norm(train_f, axis=1, keepdims=True), 1e-12)
    kk = min(k, len(bank))
    scores = {"linear_max_logit": {name: l.max(1) for name, l in logits.items()},
              f"knn{kk}": {name: _knn(bank, f, kk) for name, f in sets.items()}}
    predicted = {name: head.classes_[l.argmax(1)] for name, l in logits.items()}
    return scores, predicted


def frozen_reference(config: dict, model_args: dict, image_size: int, train_x: np.ndarray, train_y: np.ndarray,
                     calib_x: np.ndarray, known_x: np.ndarray, known_y: np.ndarray, unknown_x: np.ndarray | None,
                     alpha: float, features_of: Callable[[np.ndarray], np.ndarray] | None = None) -> dict:
    """The probe's numbers on the export's images; ``{"available": False, "why": ...}`` without weights.

    ``features_of`` replaces the pretrained backbone (tests)."""
    arch, weights, size = reference_backbone(config, model_args, image_size)
    record: dict = {"arch": arch, "weights": weights, "input_size": size, "alpha": alpha}
    t0 = time.perf_counter()
    try:
        features = features_of or frozen_features(arch, weights, size)
    except ProbeUnavailable as e:
        return {**record, "available": False, "why": str(e)}
    from osr.export.feature_bank import pick_per_class

    picked = pick_per_class(np.asarray(train_y), PROBE_TRAIN_PER_CLASS, seed=0)
    unknown_x = unknown_x if unknown_x is not None else known_x[:0]
    log.info("frozen-feature reference: %s (%s) at %d px on %d training, %d calibration, %d test images", arch,
             weights, size, len(picked), len(calib_x), len(known_x) + len(unknown_x))
    train_f = features(train_x[picked])
    sets = {"calib": features(calib_x), "known": features(known_x), "unknown": features(unknown_x)}
    scores, predicted = probe_scores(train_f, np.asarray(train_y)[picked], sets)
    record.update(available=True, train_images=int(len(picked)), accuracy=float(np.mean(predicted["known"] == known_y)),
                  probes={name: _decisions(s["calib"], s["known"], s["unknown"], alpha) for name, s in scores.items()},
                  seconds=round(time.perf_counter() - t0, 1))
    if len(unknown_x):
        record["best"] = max(record["probes"], key=lambda name: record["probes"][name]["auroc"])
    return record


def comparison(reference: dict, metrics: dict) -> str | None:
    """A plain warning when the exported model separates known from unknown worse than the probe, else None."""
    if not reference.get("available") or "best" not in reference or "auroc" not in metrics:
        return None
    best = reference["probes"][reference["best"]]
    if metrics["auroc"] >= best["auroc"]:
        return None
    return (f"WARNING: this model separates known from unknown test images worse than frozen ImageNet features with "
            f"no training: AUROC {metrics['auroc']:.3f} against {best['auroc']:.3f} ({_probe_name(reference['best'])} "
            f"on frozen {reference['arch']} at {reference['input_size']} px), unknowns rejected "
            f"{_share(metrics.get('unknown_rejected_rate'))} against {_share(best['unknown_rejected_rate'])}. "
            "Fine-tuning on little data can destroy the pretrained novelty signal: see the README's recipe for your "
            "own classes")


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _probe_name(name: str) -> str:
    return "linear head, max-logit" if name == "linear_max_logit" else f"kNN, k = {name.removeprefix('knn')}"


def markdown(reference: dict, metrics: dict) -> str:
    """The report's section on the reference."""
    lines = ["", "## Reference: frozen ImageNet features, no training", ""]
    if not reference.get("available"):
        return "\n".join(lines + [f"Not computed: {reference.get('why', 'no pretrained weights')}.", ""])
    lines += [f"{reference['arch']} with its {reference['weights']} weights frozen, images seen at "
              f"{reference['input_size']} px; a logistic-regression head and a kNN bank on {reference['train_images']} "
              f"training images; thresholds set on the same calibration images at alpha {reference['alpha']:g}. "
              f"Linear head accuracy: {reference['accuracy']:.4f} (this model: {metrics.get('accuracy', float('nan')):.4f}).",
              "", "| score | AUROC | unknowns rejected | false rejection (known test) |", "|---|---|---|---|"]
    if "auroc" in metrics:
        lines.append(f"| this model ({metrics['score_function']}) | {metrics['auroc']:.4f} | "
                     f"{metrics['unknown_rejected_rate']:.4f} | {metrics['false_rejection']['false_rejection_rate']:.4f} |")
    for name, p in reference["probes"].items():
        lines.append(f"| frozen: {_probe_name(name)} | {_rate(p.get('auroc'))} | "
                     f"{_rate(p.get('unknown_rejected_rate'))} | {_rate(p['false_rejection'])} |")
    warning = comparison(reference, metrics)
    lines += ["", f"**{warning}.**" if warning else "This model is at least as good as the frozen reference "
              "at telling known from unknown (AUROC).", ""]
    return "\n".join(lines)
