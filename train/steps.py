"""One training step per method: CE (optionally mixed), symmetric KD and asymmetric distillation.

Each step takes a normalised batch and returns the loss and its stats; the loop owns
optimisation. ``mixed`` is drawn by the loop (probability ``p_mix``) so every method sees the
same step schedule.

The stats hold every weighted term of the loss under a ``loss_`` key (they sum to the loss; a
term a step kind has is always present, 0 when it has no samples), the mean max-logit of the
student on the batch and, on AD mixed steps, the learnable fraction. They are detached tensors,
so reading them costs no device sync until ``EpochTerms.means``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import cutmix, mixup
from .config import TrainConfig
from .losses import dist_loss, dist_to_probs, learnable_mask, soft_cross_entropy, two_hot

MixFn = Callable[..., tuple[Tensor, Tensor, float]]
MIX_FNS: dict[str, MixFn] = {"mixup": mixup, "cutmix": cutmix}


def mixed_ce(logits: Tensor, y: Tensor, perm: Tensor, lam: float) -> Tensor:
    """Two-hot cross-entropy of a mixed batch."""
    return lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])


def _result(s: Tensor, terms: dict[str, Tensor], **extra: Tensor) -> tuple[Tensor, dict]:
    loss = sum(terms.values())
    stats = {f"loss_{k}": v.detach() for k, v in terms.items()}
    stats["max_logit"] = s.detach().max(dim=1).values.mean()
    stats.update({k: v.detach() for k, v in extra.items()})
    return loss, stats


class FeatureAnchor:
    """A term that keeps the student's penultimate features (its head's input) near those of the
    frozen pretrained network on the images the student sees: 1 - cosine, times ``weight``.
    Fine-tuning on a few hundred images per class otherwise reshapes the features that carry
    the pretrained network's novelty signal (docs/results.md, "open-set quality on small data").

    ``anchor`` is the pretrained network cut at its head (its features), frozen and in eval mode;
    ``student_head`` is the student's head, whose input a forward hook captures."""

    def __init__(self, anchor: nn.Module, student_head: nn.Module, weight: float):
        self.anchor, self.weight = anchor, weight
        self.features: Tensor | None = None
        student_head.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        self.features = inputs[0]

    def __call__(self, x: Tensor) -> Tensor:
        """The term for the student's last forward pass, which saw ``x``."""
        with torch.no_grad():
            target = self.anchor(x).float()
        return self.weight * (1 - F.cosine_similarity(self.features.float(), target, dim=1)).mean()


class Step:
    """Callable ``(student, x, y, mixed) -> (loss, stats)``; ``teacher`` is frozen and in eval mode."""

    def __init__(self, cfg: TrainConfig, num_classes: int, teacher: nn.Module | None = None,
                 anchor: FeatureAnchor | None = None):
        self.cfg = cfg
        self.k = num_classes
        self.teacher = teacher
        self.anchor = anchor
        self.mix = MIX_FNS.get(cfg.mix)
        self.dist = lambda s, t: dist_loss(s, t, beta=cfg.dist_beta, gamma=cfg.dist_gamma, tau=cfg.tau)

    @torch.no_grad()
    def _teach(self, x: Tensor) -> Tensor:
        return self.teacher(x).float()

    def __call__(self, student: nn.Module, x: Tensor, y: Tensor, mixed: bool) -> tuple[Tensor, dict]:
        if self.anchor is None:
            return self._method_step(student, x, y, mixed)
        seen: list[Tensor] = []

        def recording(images: Tensor) -> Tensor:
            seen.append(images)
            return student(images)

        loss, stats = self._method_step(recording, x, y, mixed)
        term = self.anchor(seen[-1])
        stats["loss_anchor"] = term.detach()
        return loss + term, stats

    def _method_step(self, student, x: Tensor, y: Tensor, mixed: bool) -> tuple[Tensor, dict]:
        method = self.cfg.method
        if not mixed or self.mix is None:
            s = student(x).float()
            if method == "ce":
                return _result(s, {"ce": F.cross_entropy(s, y)})
            return _result(s, {"ce": self.cfg.alpha_ce * F.cross_entropy(s, y), "dist": self.dist(s, self._teach(x))})
        x_mix, perm, lam = self.mix(x, alpha=self.cfg.mix_alpha)
        if method == "ce":
            s_mix = student(x_mix).float()
            return _result(s_mix, {"ce": mixed_ce(s_mix, y, perm, lam)})
        if method == "kd":  # symmetric: the teacher sees only the mixed image
            s_mix = student(x_mix).float()
            return _result(s_mix, {"ce": mixed_ce(s_mix, y, perm, lam), "dist": self.dist(s_mix, self._teach(x_mix))})
        return self._asymmetric(student, x, x_mix, y, perm, lam)

    def _asymmetric(self, student, x, x_mix, y, perm, lam) -> tuple[Tensor, dict]:
        cfg = self.cfg
        # One teacher pass over raw and mixed images together: same FLOPs, better utilisation.
        t_raw, t_mix = self._teach(torch.cat([x, x_mix])).chunk(2)
        s_mix = student(x_mix).float()
        learn = learnable_mask(t_mix, y, y[perm])
        hard = ~learn
        terms = {"dist_raw_pair": lam * self.dist(s_mix, t_raw) + (1 - lam) * self.dist(s_mix, t_raw[perm])}
        # The released code's target is the teacher's view of the base image, whatever lam is
        # (so at lam < 0.5 it pulls toward the minority image); the others are ablations.
        if cfg.ad_learnable_target == "raw":
            terms["learnable"] = self.dist(s_mix[learn], t_raw[learn])
        elif cfg.ad_learnable_target == "mixed":
            terms["learnable"] = self.dist(s_mix[learn], t_mix[learn])
        elif cfg.ad_learnable_target == "lam":
            q = lam * F.softmax(t_raw / cfg.tau, dim=1) + (1 - lam) * F.softmax(t_raw[perm] / cfg.tau, dim=1)
            terms["learnable"] = dist_to_probs(s_mix[learn], q[learn], cfg.dist_beta, cfg.dist_gamma, cfg.tau)
        q_hard = two_hot(y, y[perm], lam, self.k, r=cfg.smoothing_r)
        terms["hard_soft_ce"] = soft_cross_entropy(s_mix[hard], q_hard[hard])
        if cfg.ad_mixed_ce:
            terms["mixed_ce"] = cfg.ad_mixed_ce * mixed_ce(s_mix, y, perm, lam)
        return _result(s_mix, terms, learnable_fraction=learn.float().mean())


class EpochTerms:
    """Per-epoch means of the step stats, kept apart for ordinary and mixed steps.

    Within a kind every step has the same keys, so the ``loss_`` means of a kind add up to the
    mean loss of its steps.
    """

    def __init__(self) -> None:
        self.sums: dict[str, dict[str, Tensor | float]] = {"ordinary": {}, "mixed": {}}
        self.counts = {"ordinary": 0, "mixed": 0}

    def add(self, mixed: bool, stats: dict) -> None:
        kind = "mixed" if mixed else "ordinary"
        self.counts[kind] += 1
        sums = self.sums[kind]
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v

    def means(self) -> dict[str, dict[str, float]]:
        return {kind: {k: float(v) / self.counts[kind] for k, v in sums.items()}
                for kind, sums in self.sums.items() if self.counts[kind]}
