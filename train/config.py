"""The typed training configuration: one documented field per knob, overridable from the CLI.

The resolved config is saved into the checkpoint as plain data, so a run can be rebuilt,
audited and exported from its checkpoint alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
import types
import typing
from dataclasses import dataclass, field

# From a module that imports nothing: building the parser must not import torch (osr-train --help).
from .choices import AD_LEARNABLE_TARGETS, ARCHS, DATASETS, INPUT_NORMS, METHODS, MIXES, SCORES


def _f(default, help: str, choices: tuple | None = None, shown: str | None = None):
    """A field; `shown` is what --help gives as the default when the value itself would mislead."""
    return field(default=default, metadata={"help": help, "choices": choices, "shown": shown})


@dataclass
class TrainConfig:
    # data
    dataset: str = _f("cifar10", "dataset", DATASETS)
    split: int = _f(0, "index of the known/unknown split in osr_splits.json")
    data_root: str = _f(os.environ.get("OSR_DATA_ROOT", "data"), "folder with the dataset packs or ImageFolder tree (env OSR_DATA_ROOT)")
    download: bool = _f(False, "download CIFAR-10/MNIST with torchvision when the packs are missing")
    image_size: int | None = _f(None, "square side of the data", shown="32; 64 for tiny_imagenet")
    calib_fraction: float = _f(0.1, "share of each known class's training images held out for calibration")
    split_seed: int = _f(0, "seed of the calibration hold-out and subsets (keep equal for teacher and student)")
    max_train_per_class: int | None = _f(None, "train on at most this many images per class (quick runs)", shown="all")
    subset_seed: int | None = _f(None, "with --max-train-per-class: seed of which images of each class are drawn (another "
                                       "subset of the same pool; the calibration hold-out and test sets stay); teacher and "
                                       "students of one subset share it", shown="none: the draw of --split-seed")
    max_test_per_class: int | None = _f(None, "evaluate on at most this many test images per class", shown="all")
    skip_bad_images: bool = _f(False, "imagefolder: leave out image files that do not decode (named in a warning) "
                                      "instead of stopping with their list")
    # model
    arch: str = _f("classifier32", "student (or teacher) architecture", ARCHS)
    width: float = _f(1.0, "channel width multiplier")
    pretrained: str | None = _f(None, "start from ImageNet weights: a weights name (efficientnet_lite0: imagenet; tv_*: "
                                      "torchvision's enum names, e.g. IMAGENET1K_V1, downloaded to the torch cache) or "
                                      "a path to a state dict", shown="none: random initialisation")
    input_size: int | None = _f(None, "side the network sees: batches are resized to it on the device and in the "
                                      "exported graph (e.g. 64-224 for a pretrained backbone)", shown="--image-size")
    input_norm: str = _f("auto", "normalisation the network sees: auto (a pretrained backbone's own, else the data's), "
                                 "data, imagenet, half (0.5/0.5)", INPUT_NORMS)
    backbone_lr_mult: float = _f(0.1, "with --pretrained: learning rate of the pretrained layers relative to the new head")
    freeze_backbone_epochs: float = _f(0.0, "with --pretrained: train only the new head for this many epochs first")
    freeze_bn: bool = _f(False, "with --pretrained: keep BatchNorm's running statistics at the pretrained values "
                                "(BatchNorm in eval mode while training; its scale and shift still learn)")
    feature_anchor: float = _f(0.0, "with --pretrained: weight of a term keeping the penultimate features near the "
                                    "frozen pretrained network's (1 - cosine) on the images the student sees")
    # method
    method: str = _f("ce", "ce: cross-entropy; kd: symmetric distillation; ad: asymmetric distillation", METHODS)
    mix: str = _f("none", "multi-sample augmentation on mixed steps", MIXES, shown="none; cutmix for kd/ad")
    p_mix: float = _f(0.5, "probability that a step is a mixed step")
    mix_alpha: float = _f(1.0, "Beta(alpha, alpha) parameter of lam")
    teacher: str | None = _f(None, "teacher checkpoint or run folder (required for kd and ad)", shown="none")
    alpha_ce: float = _f(1.0, "weight of the CE term on ordinary steps (0.95 for MobileNetV2 in the paper)")
    smoothing_r: float = _f(0.75, "r of the smoothed two-hot target on hard mixed samples (0 = released code)")
    ad_mixed_ce: float = _f(0.0, "weight of a two-hot CE on every mixed sample in AD's mixed steps (0 = the paper's "
                                 "loss; > 0 is a diagnostic: it pushes the logit scale up like CE+CutMix)")
    ad_learnable_target: str = _f("raw", "target of AD's DIST term on learnable mixed samples: raw = the teacher on the "
                                         "base image (the paper's code), mixed = the teacher on the mixed image, lam = "
                                         "lam-weighted pair of the teacher's raw views, none = no such term (ablations)",
                                  AD_LEARNABLE_TARGETS)
    dist_beta: float = _f(1.0, "DIST inter-class (per-sample) weight")
    dist_gamma: float = _f(1.0, "DIST intra-class (per-class) weight")
    tau: float = _f(1.0, "DIST temperature")
    randaugment: bool = _f(True, "RandAugment N=1 M=9 on top of crop and flip")
    batch_augment: bool = _f(False, "hold the training images on the device and augment whole batches there "
                                    "(GPU hosts with few CPU cores; RandAugment draws one op per 8 images)")
    # optimisation
    epochs: int = _f(30, "training epochs")
    batch_size: int = _f(128, "global batch size (split over DDP processes)")
    lr: float = _f(0.1, "learning rate at batch 128 (scaled linearly with batch size)")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(5e-4, "SGD weight decay")
    warmup_epochs: float = _f(1.0, "linear warm-up length in epochs")
    lr_milestones: tuple[float, ...] = _f((0.3, 0.6, 0.8), "fractions of training where the lr is multiplied by lr_gamma",
                                          shown="0.3 0.6 0.8")
    lr_gamma: float = _f(0.2, "lr step factor")
    # run
    seed: int = _f(0, "training seed (model init, data order, augmentation)")
    workers: int = _f(0, "DataLoader worker processes (0 = augment in the training process)")
    score: str = _f("max_logit", "known-ness score used for the reported open-set metrics", SCORES)
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    amp: bool = _f(True, "bf16 autocast on CUDA")
    channels_last: bool = _f(True, "channels_last memory format on CUDA")
    compile: bool = _f(False, "torch.compile the student's and teacher's training passes (CUDA hosts; the first "
                                 "steps of a run compile, so time later epochs)")
    reference: bool = _f(True, "with --pretrained: after the last epoch, also measure frozen ImageNet features with no "
                               "training on the same images (a linear head and kNN) and warn when this run is worse")
    eval_every: int = _f(0, "also evaluate on the test sets every N epochs (reporting only; each evaluation runs "
                            "over every test image, or --max-test-per-class of each class)",
                         shown="0: only after the last epoch")
    out: str | None = _f(None, "run folder", shown="runs/<dataset>-s<split>-<arch>-<method>[-<mix>]-seed<seed>")
    resume: bool = _f(False, "continue the run in --out from its checkpoint")

    def __post_init__(self) -> None:
        for name in ("dataset", "arch", "method", "mix", "score", "ad_learnable_target"):
            choices = self.__dataclass_fields__[name].metadata["choices"]
            if getattr(self, name) not in choices:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}: valid are {', '.join(choices)}")
        if self.method in ("kd", "ad"):
            if not self.teacher:
                raise ValueError(f"method {self.method} needs --teacher CHECKPOINT (train one with --method ce)")
            if self.mix == "none":
                self.mix = "cutmix"
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be 0 (only after the last epoch) or positive, got {self.eval_every}")
        self.lr_milestones = tuple(self.lr_milestones)

    @property
    def run_dir(self) -> str:
        if self.out:
            return self.out
        mix = f"-{self.mix}" if self.mix != "none" else ""
        return os.path.join("runs", f"{self.dataset}-s{self.split}-{self.arch}-{self.method}{mix}-seed{self.seed}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    def digest(self, eval_every: int = 1) -> str:
        """A short hash of everything that shapes the result (not where it is written, nor how often it is
        evaluated: the test sets are for reporting only). ``eval_every`` is hashed as the given value, 1 (its
        default when the first runs were checkpointed), so their digests stay valid whatever --eval-every says
        now; a run checkpointed with another --eval-every has that value in its digest (Trainer._resume)."""
        d = {k: v for k, v in self.to_dict().items() if k not in _NOT_IN_DIGEST}
        d["eval_every"] = eval_every
        for k, default in _ADDED_LATER.items():  # at its default an added knob keeps old runs resumable
            if d[k] == default:
                del d[k]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# Where and how fast a run goes, not what it learns: resuming with other values is fine.
_NOT_IN_DIGEST = ("out", "resume", "workers", "device", "data_root", "compile", "reference")

# Fields added after runs were checkpointed, with the default that reproduces the older behaviour.
_ADDED_LATER = {"ad_mixed_ce": 0.0, "ad_learnable_target": "raw", "pretrained": None, "input_size": None,
                "input_norm": "auto", "backbone_lr_mult": 0.1, "freeze_backbone_epochs": 0.0, "feature_anchor": 0.0,
                "freeze_bn": False,
                "skip_bad_images": False, "subset_seed": None}


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


def _optional(tp):
    """(inner type, is_optional) of ``X | None``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return tp, False


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" to every flag's help, except where the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help and "(default: " in action.help:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="osr-train",
        description="Train a teacher, a distilled student (asymmetric distillation) or a baseline for open-set recognition.",
        formatter_class=_DefaultsFormatter,
    )
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        tp, _ = _optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        shown = f.metadata["shown"]
        help_text = f.metadata["help"] + (f" (default: {shown})" if shown else "")
        kw = {"default": f.default, "help": help_text, "dest": f.name}
        if tp is bool:
            kw.update(type=_parse_bool, nargs="?", const=True, metavar="BOOL")
        elif typing.get_origin(tp) is tuple:
            kw.update(type=float, nargs="+")
        else:
            kw.update(type=tp)
        if f.metadata["choices"]:
            kw["choices"] = f.metadata["choices"]
        p.add_argument(flag, **kw)
    return p


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    ns = build_parser().parse_args(argv)
    return TrainConfig(**vars(ns))


def command_line(config: dict) -> str:
    """The ``osr-train`` command that rebuilds a run from its saved config, runnable as written (from the
    folder the run was started in): the dataset, split and data root, then every flag off its default."""
    defaults = TrainConfig.__dataclass_fields__
    parts = ["osr-train"]
    for name, value in config.items():
        if name not in defaults or name in ("resume", "workers", "device"):
            continue
        default = defaults[name].default
        if isinstance(default, tuple):
            default = list(default)
        # data_root's default is whatever OSR_DATA_ROOT says where the command is run: always written out
        if value is None or (value == default and name not in ("dataset", "split", "data_root")):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else f"{flag} false")
        elif isinstance(value, (list, tuple)):
            parts.append(f"{flag} {' '.join(shlex.quote(str(v)) for v in value)}")
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)
