"""Augmentations: a per-sample training transform (torchvision v2) and batch Mixup/CutMix.

Batch functions draw all randomness from torch (global RNG, or `generator` when given), so a
seeded run is repeatable. `lam` is always returned as a python float.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torchvision.transforms import v2


def train_transform(
    image_size: int, randaugment: bool = True, crop_padding: int = 4, flip: bool = True
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Random crop (zero padding, as in the literature), horizontal flip, RandAugment(N=1, M=9).

    Takes and returns a uint8 CHW tensor.
    """
    steps: list[Callable] = [v2.RandomCrop(image_size, padding=crop_padding or None)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment:
        steps.append(v2.RandAugment(num_ops=1, magnitude=9))
    return v2.Compose(steps)


def batch_crop_flip(x: torch.Tensor, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Per-sample random crop (zero padding) and horizontal flip of a uint8 NCHW batch, in one
    gather on the batch's device: no per-image Python work."""
    n, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,)).to(dev)
    dx = torch.randint(0, 2 * padding + 1, (n,)).to(dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
    out = padded[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    if flip:
        mirror = (torch.rand(n) < 0.5).to(dev)[:, None, None, None]
        out = torch.where(mirror, out.flip(3), out)
    return out


_RANDAUGMENT = v2.RandAugment(num_ops=1, magnitude=9)


def batch_randaugment(x: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """RandAugment(N=1, M=9) on a uint8 NCHW batch, with its own random op for every ``chunk``
    images (torchvision applies one op to a whole batched tensor). Chunks of 8 keep the op
    diversity of per-image RandAugment close while running on the GPU."""
    return torch.cat([_RANDAUGMENT(part) for part in x.split(chunk)])


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    # torch's Beta sampler takes no generator: seed a numpy sampler from the torch RNG instead.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _permutation(n: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randperm(n, generator=generator).to(device)


def mixup(
    x: torch.Tensor,
    lam: float | None = None,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """x_mix = lam * x + (1 - lam) * x[perm], lam ~ Beta(alpha, alpha) unless given.

    Returns (x_mix, perm, lam); `x` is a float batch NCHW.
    """
    perm = _permutation(x.shape[0], x.device, generator)
    lam = _beta(alpha, generator) if lam is None else float(lam)
    return lam * x + (1.0 - lam) * x[perm], perm, lam


def cutmix(
    x: torch.Tensor,
    lam: float | None = None,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste x[perm] into one box of a copy of x (the same box for the whole batch).

    lam0 ~ Beta(alpha, alpha) unless given; the box has sides round(sqrt(1 - lam0) * H) and
    round(sqrt(1 - lam0) * W), a uniformly drawn centre, and is clipped to the image.
    Returns (x_mix, perm, lam) with lam = 1 - box_area / (H * W), the exact share of pixels
    still from x after clipping.
    """
    n, _, h, w = x.shape
    perm = _permutation(n, x.device, generator)
    lam0 = _beta(alpha, generator) if lam is None else float(lam)
    side = math.sqrt(1.0 - lam0)
    cut_h, cut_w = round(side * h), round(side * w)
    cy = int(torch.randint(0, h, (1,), generator=generator).item())
    cx = int(torch.randint(0, w, (1,), generator=generator).item())
    y1, y2 = max(cy - cut_h // 2, 0), min(cy - cut_h // 2 + cut_h, h)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx - cut_w // 2 + cut_w, w)

    x_mix = x.clone()
    x_mix[:, :, y1:y2, x1:x2] = x[perm][:, :, y1:y2, x1:x2]
    lam_exact = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
    return x_mix, perm, float(lam_exact)


class DeviceBatches:
    """``--batch-augment``'s loader: the training set lives on the device as one uint8 tensor and
    each batch is augmented whole there (``batch_crop_flip``, then ``batch_randaugment``), in the
    order of ``sampler``; iterated like a DataLoader with ``drop_last``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, sampler, batch_size: int, randaugment: bool,
                 device: torch.device | str = "cpu"):
        self.x = x.contiguous().to(device)
        self.y = y.to(device)
        self.sampler, self.batch_size, self.randaugment = sampler, batch_size, randaugment

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        order = torch.tensor(list(self.sampler), device=self.x.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = batch_crop_flip(self.x[idx])
            yield (batch_randaugment(x) if self.randaugment else x), self.y[idx]
