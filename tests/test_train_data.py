from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osr.train.data import DataError, eval_resize, known_unknown, load_open_set, reindex, stratified_holdout

FIXTURE = Path(__file__).parent / "fixtures" / "data"


def test_reindex_follows_split_order():
    known = [7, 2, 5]
    assert reindex(np.array([2, 5, 7, 7, 2]), known).tolist() == [1, 2, 0, 0, 1]
    with pytest.raises(ValueError):
        reindex(np.array([3]), known)


def test_cifar10_split0_lists_and_names():
    known, unknown, names = known_unknown("cifar10", 0)
    assert known == [0, 6, 4, 9, 1, 7] and unknown == [2, 3, 5, 8]
    assert names == ["airplane", "frog", "deer", "truck", "automobile", "horse"]
    with pytest.raises(ValueError, match="valid splits are 0..4"):
        known_unknown("cifar10", 5)


def test_stratified_holdout_takes_share_of_every_class():
    labels = np.repeat(np.arange(3), [10, 20, 40])
    keep, hold = stratified_holdout(labels, 0.1, seed=0)
    assert np.bincount(labels[hold]).tolist() == [1, 2, 4]
    assert len(np.intersect1d(keep, hold)) == 0 and len(keep) + len(hold) == len(labels)
    keep2, hold2 = stratified_holdout(labels, 0.1, seed=0)
    assert hold.tolist() == hold2.tolist()


def test_open_set_from_fixture_pack():
    d = load_open_set("cifar10", 0, FIXTURE, calib_fraction=0.1)
    assert d.classes == ["airplane", "frog", "deer", "truck", "automobile", "horse"]
    assert d.train_x.shape[1:] == (32, 32, 3) and d.train_x.dtype == np.uint8
    assert np.bincount(d.train_y).tolist() == [36] * 6 and np.bincount(d.calib_y).tolist() == [4] * 6
    assert len(d.test_known_x) == 6 * 15 and len(d.test_unknown_x) == 4 * 15
    assert set(d.test_known_y.tolist()) == set(range(6))
    # calibration indices point at known-class training images of the source pack
    src_labels = np.load(FIXTURE / "cifar10" / "train_part1.npz")["labels"]
    assert set(src_labels[d.calib_indices].tolist()) <= {0, 6, 4, 9, 1, 7}
    capped = load_open_set("cifar10", 0, FIXTURE, max_train_per_class=5)
    assert np.bincount(capped.train_y).tolist() == [5] * 6
    assert capped.calib_indices.tolist() == d.calib_indices.tolist()  # the hold-out ignores the cap


def test_missing_data_says_where_and_how(tmp_path):
    with pytest.raises(DataError, match=r"cifar10 data not found under .*--data-root"):
        load_open_set("cifar10", 0, tmp_path)
    with pytest.raises(ValueError, match="valid datasets are cifar10, mnist, tiny_imagenet, imagefolder"):
        load_open_set("svhn", 0, tmp_path)


def test_eval_resize_shorter_side_center_crop():
    img = Image.fromarray(np.arange(40 * 80 * 3, dtype=np.uint8).reshape(40, 80, 3) % 251)
    out = eval_resize(img, 20)
    expected = np.asarray(img.resize((40, 20), Image.BILINEAR))[:, 10:30]
    assert out.shape == (20, 20, 3) and np.array_equal(out, expected)
    same = np.zeros((20, 20, 3), np.uint8)
    assert np.array_equal(eval_resize(Image.fromarray(same), 20), same)


def test_imagefolder_source(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 3)):
        for c in ("cats", "dogs"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(tmp_path / split / c / f"{i}.png")
    (tmp_path / "unknown" / "x").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / "unknown" / "x" / "u.jpg")
    d = load_open_set("imagefolder", 0, tmp_path, image_size=32, calib_fraction=0.2)
    assert d.classes == ["cats", "dogs"]
    assert d.train_x.shape == (16, 32, 32, 3) and len(d.calib_x) == 4
    assert d.test_known_x.shape == (6, 32, 32, 3) and d.test_unknown_x.shape == (1, 32, 32, 3)


def test_readme_tiny_imagenet_pack_snippet(tmp_path, monkeypatch):
    """The README's Tiny-ImageNet packing code, run on a 3-class tree laid out like the official zip."""
    from osr.train.data import JpegPack

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = readme.split("To pack Tiny-ImageNet", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    src = tmp_path / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    wnids = ["n03", "n01", "n02"]  # not sorted on purpose: labels follow the sorted order
    for wnid in wnids:
        (src / "train" / wnid / "images").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
                src / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", format="JPEG")
        (src / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    (src / "val" / "images").mkdir(parents=True)
    lines = []
    for i, wnid in enumerate(["n02", "n03", "n01", "n02"]):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            src / "val" / "images" / f"val_{i}.JPEG", format="JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (src / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    train = JpegPack([tmp_path / "data" / "tiny_imagenet" / "train_known_union_part1.npz"])
    val = JpegPack([tmp_path / "data" / "tiny_imagenet" / "val.npz"])
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2] and val.labels.tolist() == [1, 2, 0, 1]
    assert val.raw(3) == (src / "val" / "images" / "val_3.JPEG").read_bytes()
    assert train.decode(np.arange(6), 64).shape == (6, 64, 64, 3)
