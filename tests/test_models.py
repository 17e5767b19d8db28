import pytest
import torch
from torch import nn

from osr.train.models import ARCHS, SCRATCH_ARCHS, build_model, count_parameters


@pytest.mark.parametrize("arch", SCRATCH_ARCHS)
@pytest.mark.parametrize("width", [0.25, 0.5])
def test_small_widths_give_logits_at_32_and_64_px(arch, width):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=6, width=width).eval()
    with torch.no_grad():
        for size in (32, 64):
            assert model(torch.randn(2, 3, size, size)).shape == (2, 6)


@pytest.mark.parametrize("arch", ARCHS)
def test_grey_28px_converted_to_rgb_works(arch):
    model = build_model(arch, num_classes=4, width=0.25 if arch in SCRATCH_ARCHS else 1.0).eval()
    grey = torch.randn(2, 1, 28, 28).expand(-1, 3, -1, -1)
    with torch.no_grad():
        assert model(grey).shape == (2, 4)


def test_train_mode_backward_reaches_all_parameters():
    model = build_model("classifier32", num_classes=3, width=0.25).train()
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_classifier32_has_about_one_million_parameters():
    n = count_parameters(build_model("classifier32", num_classes=10))
    # conv weights alone: 3*64*9 + 64*64*9 + 64*128*9 + 6*128*128*9 = 997,056
    assert 0.99e6 < n < 1.02e6


def test_width_scales_parameter_count():
    full = count_parameters(build_model("resnet18", 10, width=1.0))
    half = count_parameters(build_model("resnet18", 10, width=0.5))
    assert 10.5e6 < full < 11.5e6  # CIFAR ResNet-18 ~ 11.2 M
    assert 0.2 < half / full < 0.3  # conv params scale ~ width^2


def test_unknown_arch_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        build_model("vgg16", 10)
    for arch in ARCHS:
        assert arch in str(err.value)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_resnet_has_cifar_stem(arch):
    model = build_model(arch, 10, width=0.25)
    assert model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1)
    assert model.conv1.padding == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)


def test_resnet50_uses_bottleneck_expansion():
    model = build_model("resnet50", 10, width=0.25)
    assert model.fc.in_features == 128 * 4


@pytest.mark.parametrize("size,expected", [(32, 4), (64, 8)])
def test_mobilenetv2_downsamples_8x(size, expected):
    model = build_model("mobilenetv2", 10, width=0.5).eval()
    with torch.no_grad():
        features = model.features(torch.randn(1, 3, size, size))
    assert features.shape[-2:] == (expected, expected)


def test_classifier32_head_is_bias_free():
    model = build_model("classifier32", 10, width=0.5)
    assert model.fc.bias is None
    assert model.fc.in_features == 64


def test_pretrained_archs_have_fixed_widths():
    with pytest.raises(ValueError, match="leave --width at 1"):
        build_model("efficientnet_lite0", 6, width=0.5)
