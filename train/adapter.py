"""One adapter between a batch and a network that wants another input size or normalisation.

Training batches are normalised with the data's statistics at the data's resolution (e.g. CIFAR
at 32 px). A pretrained backbone wants its own (EfficientNet-Lite: 0.5/0.5; torchvision:
ImageNet's mean/std) and often a larger input; a teacher may run at a resolution other than its
student's. ``InputAdapter`` maps one to the other on the device: undo the source normalisation,
resize, apply the target normalisation. Mixup and CutMix are per-pixel affine in the image, so
adapting a mixed batch equals mixing the adapted images (up to the resize's interpolation).

The adapter is part of the model that needs it (``AdaptedModel``), so the exported ONNX graph
and a distillation teacher apply it alike.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# The statistics a pretrained backbone expects, on the 0..1 scale.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


class InputAdapter(nn.Module):
    """x normalised with (src_mean, src_std) at any size -> (dst_mean, dst_std) at ``size`` px.

    ``size=None`` keeps the input size. Upsampling is bilinear; downsampling is bilinear with
    antialiasing (as PIL does), so a 64 px teacher view of a 128 px batch is not aliased.
    """

    def __init__(
        self,
        src_mean: Sequence[float],
        src_std: Sequence[float],
        dst_mean: Sequence[float],
        dst_std: Sequence[float],
        size: int | None = None,
    ) -> None:
        super().__init__()
        src_mean, src_std = torch.tensor(src_mean, dtype=torch.float32), torch.tensor(src_std, dtype=torch.float32)
        dst_mean, dst_std = torch.tensor(dst_mean, dtype=torch.float32), torch.tensor(dst_std, dtype=torch.float32)
        # y = ((x * s_std + s_mean) - d_mean) / d_std = x * scale + shift, per channel
        self.register_buffer("scale", (src_std / dst_std).view(1, 3, 1, 1))
        self.register_buffer("shift", ((src_mean - dst_mean) / dst_std).view(1, 3, 1, 1))
        self.size = size
        self.identity_norm = bool(torch.allclose(self.scale, torch.ones(())) and torch.allclose(self.shift, torch.zeros(())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and (x.shape[-2], x.shape[-1]) != (self.size, self.size):
            down = x.shape[-1] > self.size
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=down)
        if not self.identity_norm:
            x = x * self.scale + self.shift
        return x

    def extra_repr(self) -> str:
        return f"size={self.size}"


class AdaptedModel(nn.Module):
    """``net(adapter(x))``: a backbone behind its input adapter (``.net`` holds the backbone)."""

    def __init__(self, adapter: InputAdapter, net: nn.Module) -> None:
        super().__init__()
        self.adapter = adapter
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.adapter(x))
