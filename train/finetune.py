"""Fine-tuning a pretrained backbone: its input adapter, its parameter groups and their schedules.

The new head learns at ``--lr``; the pretrained layers at ``--lr x --backbone-lr-mult`` and not
at all during the first ``--freeze-backbone-epochs`` (their BatchNorm statistics still adapt).
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

from torch import nn

from .adapter import HALF, IMAGENET_MEAN, IMAGENET_STD, AdaptedModel
from .config import TrainConfig
from .pretrained import PRETRAINED_ARCHS, expected_stats, head_name, load_pretrained
from .steps import FeatureAnchor

_NAMED_STATS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "half": (HALF, HALF)}


def input_adapter_args(cfg: TrainConfig, data_mean: Sequence[float], data_std: Sequence[float],
                       image_size: int) -> dict | None:
    """``InputAdapter`` kwargs for the run's model, or None when it sees the batch as it is."""
    if cfg.input_size is not None and cfg.input_size < 16:
        raise ValueError(f"--input-size {cfg.input_size} is too small (at least 16)")
    size = cfg.input_size if cfg.input_size not in (None, image_size) else None
    norm = cfg.input_norm
    if norm == "auto":
        norm = "backbone" if cfg.pretrained and cfg.arch in PRETRAINED_ARCHS else "data"
    if norm == "data":
        dst_mean, dst_std = list(data_mean), list(data_std)
    elif norm == "backbone":
        dst_mean, dst_std = (list(v) for v in expected_stats(cfg.arch))
    else:
        dst_mean, dst_std = (list(v) for v in _NAMED_STATS[norm])
    if size is None and (dst_mean, dst_std) == (list(data_mean), list(data_std)):
        return None
    return {"src_mean": list(data_mean), "src_std": list(data_std), "dst_mean": dst_mean, "dst_std": dst_std,
            "size": size}


def backbone_of(model: nn.Module) -> tuple[nn.Module, str]:
    """The network behind an optional adapter, and the prefix of its names in ``model``."""
    return (model.net, "net.") if isinstance(model, AdaptedModel) else (model, "")


def apply_pretrained(model: nn.Module, cfg: TrainConfig) -> set[str]:
    """Load ``cfg.pretrained`` into the model's backbone; names (in ``model``) of the loaded parameters."""
    if not cfg.pretrained:
        return set()
    net, prefix = backbone_of(model)
    return {prefix + name for name in load_pretrained(net, cfg.arch, cfg.pretrained)}


def param_groups(model: nn.Module, pretrained_names: set[str], lr: float, cfg: TrainConfig) -> list[dict]:
    """One group for the new parameters (the head, or everything from scratch), one for the pretrained ones."""
    new, old = [], []
    for name, p in model.named_parameters():
        (old if name in pretrained_names else new).append(p)
    groups = [{"params": new, "lr": lr, "name": "head" if old else "all"}]
    if old:
        groups.append({"params": old, "lr": lr * cfg.backbone_lr_mult, "name": "backbone"})
    return groups


def group_schedules(groups: list[dict], base: Callable[[int], float], steps_per_epoch: int,
                    cfg: TrainConfig) -> list[Callable[[int], float]]:
    """LambdaLR factors per group: the base schedule, with the backbone frozen for its first epochs."""
    frozen_steps = round(cfg.freeze_backbone_epochs * steps_per_epoch)

    def backbone(step: int) -> float:
        return 0.0 if step < frozen_steps else base(step)

    return [backbone if g["name"] == "backbone" else base for g in groups]


def feature_anchor(model: nn.Module, cfg: TrainConfig) -> FeatureAnchor | None:
    """``--feature-anchor``: a frozen copy of the freshly loaded pretrained model, cut at its head."""
    if not cfg.feature_anchor:
        return None
    if not cfg.pretrained:
        raise ValueError("--feature-anchor needs --pretrained: it anchors the features to the pretrained network's")
    name = head_name(model)
    anchor = copy.deepcopy(model).eval()
    anchor.set_submodule(name, nn.Identity())
    for p in anchor.parameters():
        p.requires_grad_(False)
    if not cfg.freeze_bn:
        # BatchNorm on batch statistics, as in the training student (the running statistics would make
        # the target differ from the student's features before any step); momentum 0 keeps them.
        for m in anchor.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
                m.momentum = 0.0
    return FeatureAnchor(anchor, model.get_submodule(name), cfg.feature_anchor)


def freeze_batchnorm(model: nn.Module) -> None:
    """``--freeze-bn``: BatchNorm layers to eval mode (call after ``model.train()``). Re-estimating their
    statistics on a few hundred images per class alone costs the pretrained features most of their
    novelty signal (docs/results.md, "open-set quality on small data")."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
