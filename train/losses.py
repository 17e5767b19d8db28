"""Losses for asymmetric distillation: DIST, the smoothed two-hot target, soft cross-entropy,
and the teacher's "learnable" mask on mixed images (see docs/method.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-8


def _pearson(a: torch.Tensor, b: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Pearson correlation of matching rows of a and b (along dim 1)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    tau: float = 1.0,
) -> torch.Tensor:
    """DIST (Huang et al., NeurIPS 2022): tau^2 * (beta * inter + gamma * intra).

    inter = 1 - mean over samples of Pearson(p_i, q_i) across classes; intra = 1 - mean over
    classes of Pearson(p_:c, q_:c) across the batch, with p = softmax(student / tau) and
    q = softmax(teacher / tau). ~0 when they match up to shift and scale, ~2 when uncorrelated.

    A batch of one sample has no across-batch correlation: its intra term contributes 0.
    An empty batch gives a zero that still carries a (zero) gradient.
    """
    return dist_to_probs(student_logits, F.softmax(teacher_logits / tau, dim=1), beta, gamma, tau)


def dist_to_probs(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    tau: float = 1.0,
) -> torch.Tensor:
    """DIST against a target distribution q given directly (rows sum to 1), not as logits.

    For targets that are no single teacher output, e.g. the lambda-weighted pair
    lam * softmax(t / tau) + (1 - lam) * softmax(t[perm] / tau). Same terms and edge cases as
    ``dist_loss``, which is this function with q = softmax(teacher / tau).
    """
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    p = F.softmax(student_logits / tau, dim=1)
    q = teacher_probs.to(p.dtype)
    inter = 1.0 - _pearson(p, q).mean()
    if p.shape[0] > 1:
        intra = 1.0 - _pearson(p.t(), q.t()).mean()
    else:
        intra = torch.zeros((), dtype=p.dtype, device=p.device)
    return tau**2 * (beta * inter + gamma * intra)


def two_hot(
    y: torch.Tensor, y_perm: torch.Tensor, lam: float, num_classes: int, r: float = 0.75
) -> torch.Tensor:
    """Smoothed two-hot target r/K + (1 - r) * (lam * onehot(y) + (1 - lam) * onehot(y_perm))."""
    mix = lam * F.one_hot(y, num_classes).float() + (1.0 - lam) * F.one_hot(y_perm, num_classes).float()
    return r / num_classes + (1.0 - r) * mix


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k target_k * log_softmax(logits)_k; grad-safe 0 when empty."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def learnable_mask(
    teacher_mix_logits: torch.Tensor, y: torch.Tensor, y_perm: torch.Tensor
) -> torch.Tensor:
    """True where the teacher's top-1 on the mixed image is one of the two mixed labels."""
    pred = teacher_mix_logits.argmax(dim=1)
    return (pred == y) | (pred == y_perm)
