import pytest
import torch

from osr.train.augment import cutmix, mixup, train_transform


def _distinct_batch(n=8, c=3, h=16, w=12):
    # every pixel value in the batch is different, so equality identifies the source image
    return torch.arange(n * c * h * w, dtype=torch.float32).reshape(n, c, h, w)


@pytest.mark.parametrize("seed", range(10))
def test_cutmix_pixels_come_from_x_or_x_perm_and_share_equals_lam(seed):
    x = _distinct_batch()
    g = torch.Generator().manual_seed(seed)
    x_mix, perm, lam = cutmix(x, generator=g)
    assert isinstance(lam, float)
    from_x = x_mix == x
    from_perm = x_mix == x[perm]
    assert torch.all(from_x | from_perm)
    moved = perm != torch.arange(len(perm))
    assert moved.any()
    for i in torch.nonzero(moved).flatten():
        share = from_x[i].sum().item() / from_x[i].numel()
        assert share == pytest.approx(lam, abs=1e-12)


def test_cutmix_given_lam_sets_box_size_before_clipping():
    x = _distinct_batch(n=4, h=32, w=32)
    # lam0 = 0.75 -> side 0.5 -> a 16x16 box; clipping can only shrink it
    for seed in range(20):
        _, _, lam = cutmix(x, lam=0.75, generator=torch.Generator().manual_seed(seed))
        assert 0.75 <= lam <= 1.0
    lams = {cutmix(x, lam=0.75, generator=torch.Generator().manual_seed(s))[2] for s in range(50)}
    assert 0.75 in lams  # an unclipped box appears for a central centre


def test_cutmix_is_repeatable_with_a_seeded_generator():
    x = torch.randn(6, 3, 8, 8)
    a = cutmix(x, generator=torch.Generator().manual_seed(3))
    b = cutmix(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_mixup_with_lam_one_is_identity():
    x = torch.randn(5, 3, 8, 8)
    x_mix, perm, lam = mixup(x, lam=1.0)
    assert lam == 1.0
    assert torch.equal(x_mix, x)


def test_mixup_formula_and_permutation():
    x = torch.randn(7, 3, 4, 4)
    x_mix, perm, lam = mixup(x, generator=torch.Generator().manual_seed(0))
    assert sorted(perm.tolist()) == list(range(7))
    assert 0.0 <= lam <= 1.0
    torch.testing.assert_close(x_mix, lam * x + (1 - lam) * x[perm])


def test_mixup_lam_in_unit_interval_and_varies():
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(3, 1, 2, 2)
    lams = [mixup(x, alpha=0.4, generator=g)[2] for _ in range(200)]
    assert all(0.0 <= v <= 1.0 for v in lams)
    assert len(set(lams)) > 150
    # Beta(1, 1) is uniform: mean ~0.5 (std of the mean over 400 draws ~0.014)
    uniform = [mixup(x, generator=g)[2] for _ in range(400)]
    assert abs(sum(uniform) / 400 - 0.5) < 0.06


@pytest.mark.parametrize("size", [28, 32, 64])
def test_train_transform_keeps_dtype_and_shape(size):
    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
    out = train_transform(size)(img)
    assert out.dtype == torch.uint8
    assert out.shape == img.shape


def test_train_transform_without_randomness_sources_is_identity_up_to_crop():
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    t = train_transform(32, randaugment=False, crop_padding=0, flip=False)
    assert torch.equal(t(img), img)


def test_batch_crop_flip_is_a_per_image_shifted_window_of_the_padded_image():
    from osr.train.augment import batch_crop_flip

    torch.manual_seed(0)
    x = torch.randint(1, 255, (16, 3, 8, 8), dtype=torch.uint8)
    out = batch_crop_flip(x, padding=2, flip=True)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows), i
    shifts = {tuple(torch.nonzero(out[i, 0] == 0).min(0).values.tolist()) if (out[i, 0] == 0).any() else None
              for i in range(len(x))}
    assert len(shifts) > 1  # images get different crops


def test_batch_randaugment_keeps_shape_dtype_and_is_seeded():
    from osr.train.augment import batch_randaugment

    x = torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8)
    torch.manual_seed(1)
    a = batch_randaugment(x, chunk=8)
    torch.manual_seed(1)
    b = batch_randaugment(x, chunk=8)
    assert a.shape == x.shape and a.dtype == torch.uint8 and torch.equal(a, b)


def test_device_batches_follow_the_sampler_keep_labels_and_drop_the_last_partial_batch():
    """Image i is the constant i and its label is i: after crop (zero padding 4) and flip the
    centre pixel still names the image, so every batch can be checked against the sampler's order."""
    from torch.utils.data import SequentialSampler

    from osr.train.augment import DeviceBatches

    x = torch.arange(10, dtype=torch.uint8)[:, None, None, None].expand(10, 3, 32, 32)
    batches = DeviceBatches(x, torch.arange(10), SequentialSampler(range(10)), batch_size=4, randaugment=False)
    assert len(batches) == 2  # 10 images, batches of 4, the last 2 dropped as DataLoader(drop_last=True) does
    seen = []
    for xb, yb in batches:
        assert xb.dtype == torch.uint8 and xb.shape == (4, 3, 32, 32)
        assert torch.equal(xb[:, :, 16, 16], yb[:, None].to(torch.uint8).expand(4, 3))
        seen += yb.tolist()
    assert seen == list(range(8))
