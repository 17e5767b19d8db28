"""One training step per method: CE (optionally mixed), symmetric KD and asymmetric distillation.

Each step takes a normalised batch and returns the loss; the loop owns optimisation. ``mixed``
is drawn by the loop (probability ``p_mix``) so every method sees the same step schedule.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import cutmix, mixup
from .config import TrainConfig
from .losses import dist_loss, learnable_mask, soft_cross_entropy, two_hot

MixFn = Callable[..., tuple[Tensor, Tensor, float]]
MIX_FNS: dict[str, MixFn] = {"mixup": mixup, "cutmix": cutmix}


def mixed_ce(logits: Tensor, y: Tensor, perm: Tensor, lam: float) -> Tensor:
    """Two-hot cross-entropy of a mixed batch."""
    return lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])


class Step:
    """Callable ``(student, x, y, mixed) -> (loss, stats)``; ``teacher`` is frozen and in eval mode."""

    def __init__(self, cfg: TrainConfig, num_classes: int, teacher: nn.Module | None = None):
        self.cfg = cfg
        self.k = num_classes
        self.teacher = teacher
        self.mix = MIX_FNS.get(cfg.mix)
        self.dist = lambda s, t: dist_loss(s, t, beta=cfg.dist_beta, gamma=cfg.dist_gamma, tau=cfg.tau)

    @torch.no_grad()
    def _teach(self, x: Tensor) -> Tensor:
        return self.teacher(x).float()

    def __call__(self, student: nn.Module, x: Tensor, y: Tensor, mixed: bool) -> tuple[Tensor, dict]:
        method = self.cfg.method
        if not mixed or self.mix is None:
            s = student(x)
            loss = self.cfg.alpha_ce * F.cross_entropy(s.float(), y) if method != "ce" else F.cross_entropy(s.float(), y)
            if method != "ce":
                loss = loss + self.dist(s.float(), self._teach(x))
            return loss, {}
        x_mix, perm, lam = self.mix(x, alpha=self.cfg.mix_alpha)
        if method == "ce":
            return mixed_ce(student(x_mix).float(), y, perm, lam), {}
        if method == "kd":  # symmetric: the teacher sees only the mixed image
            s_mix = student(x_mix).float()
            return mixed_ce(s_mix, y, perm, lam) + self.dist(s_mix, self._teach(x_mix)), {}
        return self._asymmetric(student, x, x_mix, y, perm, lam)

    def _asymmetric(self, student, x, x_mix, y, perm, lam) -> tuple[Tensor, dict]:
        # One teacher pass over raw and mixed images together: same FLOPs, better utilisation.
        t_raw, t_mix = self._teach(torch.cat([x, x_mix])).chunk(2)
        s_mix = student(x_mix).float()
        loss = lam * self.dist(s_mix, t_raw) + (1 - lam) * self.dist(s_mix, t_raw[perm])
        learn = learnable_mask(t_mix, y, y[perm])
        hard = ~learn
        if learn.any():
            loss = loss + self.dist(s_mix[learn], t_raw[learn])
        if hard.any():
            q = two_hot(y, y[perm], lam, self.k, r=self.cfg.smoothing_r)
            loss = loss + soft_cross_entropy(s_mix[hard], q[hard])
        if self.cfg.ad_mixed_ce:
            loss = loss + self.cfg.ad_mixed_ce * mixed_ce(s_mix, y, perm, lam)
        return loss, {"learnable": float(learn.float().mean())}
