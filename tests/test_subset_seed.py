"""--subset-seed (issue 24): another draw of the --max-train-per-class images, the same hold-out and test sets;
unset, the draw every earlier run made. The export rebuilds the same images, and a teacher of another subset is
refused."""

import shlex
from pathlib import Path

import numpy as np
import pytest

from osr.train.config import TrainConfig, command_line, config_from_args
from osr.train.data import _per_class_cap, _source, known_unknown, load_open_set, open_set_from_config, stratified_holdout

FIXTURE = Path(__file__).parent / "fixtures" / "data"
# The training indices (into the fixture pack) of --max-train-per-class 5, split seed 0, as drawn by the code
# before --subset-seed existed (git 485e0b4, train/data.py: default_rng(split_seed + 1) per class).
OLD_CAP5_INDICES = [0, 7, 8, 10, 39, 52, 58, 60, 64, 75, 165, 182, 185, 198, 199, 250, 257, 262, 266, 278, 288, 294,
                    303, 310, 311, 360, 361, 366, 375, 379]


def _pool_keep_hold():
    known, _, _ = known_unknown("cifar10", 0)
    src = _source("cifar10", FIXTURE, False)
    pool = np.flatnonzero(np.isin(src.train_labels, known))
    keep, hold = stratified_holdout(src.train_labels[pool], 0.1, 0)
    return src, pool[keep], pool[hold]


def _images(x: np.ndarray) -> set[bytes]:
    return {im.tobytes() for im in x}


def test_no_subset_seed_draws_the_subset_every_earlier_run_drew():
    src, keep, _ = _pool_keep_hold()
    assert _per_class_cap(src.train_labels, keep, 5, 0).tolist() == OLD_CAP5_INDICES
    assert _per_class_cap(src.train_labels, keep, 5, 0, None).tolist() == OLD_CAP5_INDICES
    old = src.decode_train(np.asarray(OLD_CAP5_INDICES), 32)
    assert np.array_equal(load_open_set("cifar10", 0, FIXTURE, max_train_per_class=5).train_x, old)
    # an older run's saved config has no subset_seed: export rebuilds the old draw
    config = {"dataset": "cifar10", "split": 0, "data_root": str(FIXTURE), "image_size": 32, "calib_fraction": 0.1,
              "split_seed": 0, "max_train_per_class": 5, "max_test_per_class": None}
    assert np.array_equal(open_set_from_config(config).train_x, old)


def test_subset_seeds_draw_other_training_images_and_keep_the_holdout_and_test_sets():
    src, keep, hold = _pool_keep_hold()
    draws = {s: _per_class_cap(src.train_labels, keep, 5, 0, s) for s in (None, 0, 1, 2, 3)}
    for s, idx in draws.items():
        assert np.bincount(src.train_labels[idx], minlength=10)[[0, 6, 4, 9, 1, 7]].tolist() == [5] * 6
        assert set(idx.tolist()) <= set(keep.tolist()) and not set(idx.tolist()) & set(hold.tolist())
    as_sets = [frozenset(idx.tolist()) for idx in draws.values()]
    assert len(set(as_sets)) == len(as_sets)  # five different subsets, subset seed 0 included (None is the old one)

    base = load_open_set("cifar10", 0, FIXTURE, max_train_per_class=5)
    one = load_open_set("cifar10", 0, FIXTURE, max_train_per_class=5, subset_seed=1)
    two = load_open_set("cifar10", 0, FIXTURE, max_train_per_class=5, subset_seed=2)
    for d, s in ((one, 1), (two, 2)):
        assert np.array_equal(d.train_x, src.decode_train(draws[s], 32))  # the pixels of the drawn indices
        assert np.bincount(d.train_y).tolist() == [5] * 6
        assert d.calib_indices.tolist() == base.calib_indices.tolist() and np.array_equal(d.calib_x, base.calib_x)
        assert np.array_equal(d.test_known_x, base.test_known_x) and np.array_equal(d.test_unknown_x, base.test_unknown_x)
    assert _images(one.train_x) != _images(base.train_x) != _images(two.train_x) != _images(one.train_x)
    # the same subset seed draws the same images again, and export rebuilds them from a run's config
    assert np.array_equal(load_open_set("cifar10", 0, FIXTURE, max_train_per_class=5, subset_seed=1).train_x, one.train_x)
    config = TrainConfig(data_root=str(FIXTURE), max_train_per_class=5, subset_seed=2).to_dict()
    assert np.array_equal(open_set_from_config(config).train_x, two.train_x)
    # without a cap every image is used whatever the subset seed
    assert np.array_equal(load_open_set("cifar10", 0, FIXTURE, subset_seed=1).train_x,
                          load_open_set("cifar10", 0, FIXTURE).train_x)
    with pytest.raises(ValueError, match="subset_seed must be a non-negative"):
        load_open_set("cifar10", 0, FIXTURE, max_train_per_class=5, subset_seed=-1)


def test_a_smaller_cap_of_one_subset_is_the_first_part_of_a_larger_one():
    """Why a teacher on more images of the same draw saw its students' images (and one of another draw did not)."""
    src, keep, _ = _pool_keep_hold()
    for s in (None, 1):
        assert set(_per_class_cap(src.train_labels, keep, 5, 0, s).tolist()) <= set(
            _per_class_cap(src.train_labels, keep, 12, 0, s).tolist())


def test_subset_seed_unset_keeps_older_digests_and_the_report_line_carries_it():
    assert "subset_seed" not in command_line(TrainConfig().to_dict())
    assert TrainConfig().digest() == TrainConfig(subset_seed=None).digest() != TrainConfig(subset_seed=1).digest()
    assert TrainConfig(subset_seed=1).digest() != TrainConfig(subset_seed=2).digest()
    cfg = config_from_args(["--max-train-per-class", "150", "--subset-seed", "2"])
    line = command_line(cfg.to_dict())
    assert "--subset-seed 2" in line and config_from_args(shlex.split(line)[1:]).digest() == cfg.digest()


@pytest.fixture(scope="module")
def subset_teacher(tmp_path_factory) -> Path:
    """A tiny CE teacher on 10 images per class of subset 1."""
    from osr.train.trainer import Trainer

    out = tmp_path_factory.mktemp("runs") / "teacher-subset1"
    Trainer(_tiny(out, max_train_per_class=10, subset_seed=1), progress=False).fit()
    return out


def _tiny(out, **kw) -> TrainConfig:
    base = dict(dataset="cifar10", split=0, data_root=str(FIXTURE), arch="classifier32", width=0.125, batch_size=32,
                epochs=1, device="cpu", out=str(out))
    return TrainConfig(**{**base, **kw})


def test_a_teacher_of_another_subset_is_refused_and_one_of_the_same_subset_or_all_images_is_not(subset_teacher,
                                                                                              tmp_path):
    from osr.train.checkpoint import CheckpointError
    from osr.train.trainer import Trainer

    kd = dict(method="kd", teacher=str(subset_teacher), batch_size=8)
    for other in (2, None):
        with pytest.raises(CheckpointError, match=rf"another subset .*--subset-seed 1, this run {other}\)"):
            Trainer(_tiny(tmp_path / f"s{other}", max_train_per_class=5, subset_seed=other, **kd), progress=False)
    Trainer(_tiny(tmp_path / "same", max_train_per_class=5, subset_seed=1, **kd), progress=False)  # same draw: nested
    Trainer(_tiny(tmp_path / "all", **kd), progress=False)  # the student trains on every image: no subset to match
