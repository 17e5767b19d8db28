"""The choices of osr-train's flags, in a module that imports nothing.

Building osr-train's argument parser (``osr.train.config``) reads them from here, so
``osr-train --help`` and argument errors answer without importing torch. The modules that
implement the choices check that they agree (tests/test_cli_help.py): ``osr.train.models.ARCHS``,
``osr.train.data`` and ``osr.train.metrics.SCORES``.
"""

from __future__ import annotations

DATASETS: tuple[str, ...] = ("cifar10", "mnist", "tiny_imagenet", "imagefolder")
# Square side of the data when --image-size is not given.
DEFAULT_IMAGE_SIZE: dict[str, int] = {"cifar10": 32, "mnist": 32, "tiny_imagenet": 64, "imagefolder": 32}

SCRATCH_ARCHS: tuple[str, ...] = ("resnet18", "resnet50", "mobilenetv2", "classifier32")
# The keys of osr.train.pretrained.PRETRAINED_ARCHS (which needs torch to build them).
PRETRAINED_ARCH_NAMES: tuple[str, ...] = (
    "efficientnet_lite0", "tv_resnet18", "tv_resnet50", "tv_mobilenet_v3_large", "tv_efficientnet_b0",
)
ARCHS: tuple[str, ...] = SCRATCH_ARCHS + PRETRAINED_ARCH_NAMES

METHODS: tuple[str, ...] = ("ce", "kd", "ad")
MIXES: tuple[str, ...] = ("none", "mixup", "cutmix")
SCORES: tuple[str, ...] = ("max_logit", "msp", "energy")
# osr-export --score: the logit scores, kNN on the head's input features, and fused: the max-logit and
# the kNN similarity, each standardised, summed (osr.export.graph).
FEATURE_SCORES: tuple[str, ...] = ("knn", "fused")
EXPORT_SCORES: tuple[str, ...] = SCORES + FEATURE_SCORES
# --score knn defaults, chosen on held-out known images and training images of the unknown classes
# of CIFAR-10 split 0 for the bundled model (docs/results.md): k, and training images per class in the bank.
KNN_DEFAULT_K = 20
KNN_DEFAULT_BANK_PER_CLASS = 300
INPUT_NORMS: tuple[str, ...] = ("auto", "data", "imagenet", "half")
AD_LEARNABLE_TARGETS: tuple[str, ...] = ("raw", "mixed", "lam", "none")
