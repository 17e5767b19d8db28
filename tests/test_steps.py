"""The per-method training steps: AD's optional mixed-step CE adds exactly its weighted term."""

import numpy as np
import torch
from torch import nn

from osr.train.config import TrainConfig
from osr.train.steps import Step, mixed_ce


def _models(k: int = 4) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, k))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, k)).eval()
    return student, teacher


def _loss(cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    student, teacher = _models()
    torch.manual_seed(1)
    np.random.seed(1)
    loss, _ = Step(cfg, 4, teacher)(student, x, y, mixed=True)
    return loss


def test_ad_mixed_ce_adds_its_weighted_two_hot_ce() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    paper = _loss(TrainConfig(method="ad", mix="cutmix", teacher="t.pt"), x, y)
    with_ce = _loss(TrainConfig(method="ad", mix="cutmix", teacher="t.pt", ad_mixed_ce=0.5), x, y)

    # Replay the same draw to get the mixed batch, then the term the option adds.
    student, _ = _models()
    torch.manual_seed(1)
    np.random.seed(1)
    from osr.train.augment import cutmix

    x_mix, perm, lam = cutmix(x, alpha=1.0)
    expected = 0.5 * mixed_ce(student(x_mix), y, perm, lam)
    assert torch.allclose(with_ce - paper, expected, atol=1e-5)
    assert expected > 0
