"""Backbones for open-set recognition: CIFAR-stem ResNet-18/50, CIFAR MobileNetV2, classifier32,
and ImageNet-pretrainable ones (EfficientNet-Lite0, torchvision's ResNet/MobileNetV3/EfficientNet).

Every model takes normalised float NCHW images with 3 channels (any size >= 28 px) and returns
logits [N, K]. All heads use global (adaptive) average pooling, so 32 px and 64 px both work.
A model built with ``input=`` sits behind an ``InputAdapter`` (its own input size and
normalisation, see adapter.py).
"""

from __future__ import annotations

from typing import Type

import torch
from torch import nn
from torchvision.models import MobileNetV2
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from .adapter import AdaptedModel, InputAdapter
from .pretrained import PRETRAINED_ARCHS, build_backbone

from .choices import ARCHS, SCRATCH_ARCHS  # noqa: F401  (one home; the parser reads them torch-free)


def _scaled(channels: int, width: float) -> int:
    return max(8, round(channels * width))


class CifarResNet(nn.Module):
    """torchvision's ResNet layout with a CIFAR stem (3x3 conv stride 1, no max-pool) and
    channel widths (64, 128, 256, 512) scaled by `width`.

    torchvision's `ResNet` hard-codes the stage widths, so the stages are assembled here from
    its own BasicBlock/Bottleneck; attribute names match torchvision's ResNet.
    """

    def __init__(
        self,
        block: Type[BasicBlock | Bottleneck],
        layers: list[int],
        num_classes: int,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        stage_widths = [_scaled(c, width) for c in (64, 128, 256, 512)]
        self.inplanes = stage_widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(block, stage_widths[0], layers[0], stride=1)
        self.layer2 = self._make_layer(block, stage_widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, stage_widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, stage_widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(stage_widths[3] * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(
        self, block: Type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _cifar_mobilenet_v2(num_classes: int, width: float) -> MobileNetV2:
    # Standard CIFAR variant: stem stride 1 and the first stride-2 stage (24 ch) at stride 1,
    # so the total downsampling is 8x (4x4 features at 32 px) instead of 32x.
    setting = [
        [1, 16, 1, 1],
        [6, 24, 2, 1],
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]
    model = MobileNetV2(num_classes=num_classes, width_mult=width, inverted_residual_setting=setting)
    model.features[0][0].stride = (1, 1)
    return model


def _conv_bn(in_ch: int, out_ch: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.LeakyReLU(0.2),
    ]


class Classifier32(nn.Module):
    """The open-set literature's 9-layer CNN (Neal et al. 2018; ARPL; Vaze et al. 2022).

    Three blocks of three 3x3 convs (64-64-128 | 128-128-128 | 128-128-128, the last conv of each
    block with stride 2), BN + LeakyReLU(0.2), Dropout2d(0.2) on the input of each block,
    global average pool, bias-free linear head.
    """

    def __init__(self, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        c64, c128 = _scaled(64, width), _scaled(128, width)
        self.features = nn.Sequential(
            nn.Dropout2d(0.2),
            *_conv_bn(3, c64, 1),
            *_conv_bn(c64, c64, 1),
            *_conv_bn(c64, c128, 2),
            nn.Dropout2d(0.2),
            *_conv_bn(c128, c128, 1),
            *_conv_bn(c128, c128, 1),
            *_conv_bn(c128, c128, 2),
            nn.Dropout2d(0.2),
            *_conv_bn(c128, c128, 1),
            *_conv_bn(c128, c128, 1),
            *_conv_bn(c128, c128, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c128, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def build_model(arch: str, num_classes: int, width: float = 1.0, input: dict | None = None) -> nn.Module:
    """Build a backbone from `ARCHS` returning logits [N, num_classes]; `width` scales channels.

    ``input``: keyword arguments of an ``InputAdapter`` (src_mean, src_std, dst_mean, dst_std,
    size) put in front of the backbone; the checkpoint stores them with the other args.
    """
    net = _backbone(arch, num_classes, width)
    return AdaptedModel(InputAdapter(**input), net) if input else net


def _backbone(arch: str, num_classes: int, width: float) -> nn.Module:
    if arch in PRETRAINED_ARCHS:
        if width != 1.0:
            raise ValueError(f"{arch} has fixed widths (its pretrained weights fix them); leave --width at 1")
        return build_backbone(arch, num_classes)
    if arch == "resnet18":
        return CifarResNet(BasicBlock, [2, 2, 2, 2], num_classes, width)
    if arch == "resnet50":
        return CifarResNet(Bottleneck, [3, 4, 6, 3], num_classes, width)
    if arch == "mobilenetv2":
        return _cifar_mobilenet_v2(num_classes, width)
    if arch == "classifier32":
        return Classifier32(num_classes, width)
    raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
