"""--feature-anchor: the term keeping a fine-tuned network's penultimate features near the frozen
pretrained network's (known answers on a hand-built network)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from osr.train.config import TrainConfig
from osr.train.finetune import feature_anchor
from osr.train.steps import FeatureAnchor, Step


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def test_term_is_weight_times_one_minus_cosine():
    student = tiny_net()
    identity_body = nn.Identity()
    anchor = FeatureAnchor(identity_body, student[-1], weight=2.0)
    x = torch.randn(5, 6)
    student[-1](x)  # the hook captures the head's input: x itself
    assert anchor(x).item() == pytest.approx(0.0, abs=1e-6)
    student[-1](x)
    assert anchor(-x).item() == pytest.approx(4.0)  # cosine -1: 2 x (1 - (-1))


def test_anchor_is_the_untrained_network_and_adds_its_term():
    cfg = TrainConfig(pretrained="imagenet", feature_anchor=1.0)
    model = tiny_net().train()
    anchor = feature_anchor(model, cfg)
    assert all(not p.requires_grad for p in anchor.anchor.parameters())
    step = Step(cfg, num_classes=3, anchor=anchor)
    x, y = torch.randn(8, 3, 2, 2), torch.randint(0, 3, (8,))
    loss, stats = step(model, x, y, mixed=False)
    assert stats["loss_anchor"].item() == pytest.approx(0.0, abs=1e-5)  # same weights, same batch statistics
    assert loss.item() == pytest.approx(stats["loss_ce"].item(), abs=1e-5)
    with torch.no_grad():
        model[1].weight.mul_(-1)  # the student drifts: its features change, the anchor's do not
    _, stats = step(model, x, y, mixed=False)
    assert stats["loss_anchor"].item() > 0.1


def test_needs_pretrained():
    with pytest.raises(ValueError, match="--feature-anchor needs --pretrained"):
        feature_anchor(tiny_net(), TrainConfig(feature_anchor=1.0))


def test_freeze_bn_keeps_the_running_statistics_while_the_rest_learns():
    from osr.train.finetune import freeze_batchnorm

    model = tiny_net().train()
    before = model[2].running_mean.clone()
    freeze_batchnorm(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 2, 2) * 3 + 1, torch.randint(0, 3, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert torch.equal(model[2].running_mean, before)  # eval mode: no update from the batch
    assert model[1].training and not model[2].training


def test_anchor_with_frozen_bn_matches_the_student_at_the_start():
    cfg = TrainConfig(pretrained="imagenet", feature_anchor=1.0, freeze_bn=True)
    model = tiny_net().train()
    anchor = feature_anchor(model, cfg)
    from osr.train.finetune import freeze_batchnorm

    freeze_batchnorm(model)
    _, stats = Step(cfg, num_classes=3, anchor=anchor)(model, torch.randn(8, 3, 2, 2), torch.randint(0, 3, (8,)), False)
    assert stats["loss_anchor"].item() == pytest.approx(0.0, abs=1e-6)
