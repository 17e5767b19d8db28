"""Open-set datasets: known-class training set, calibration hold-out, known and unknown test sets.

Every source ends up as uint8 NHWC RGB numpy arrays held in memory (the datasets of the
open-set protocol are small), so augmentation and evaluation never touch the disk again.
Sources: JPEG-pack ``.npz`` files under ``--data-root`` (format in README.md, "1. Train"),
torchvision datasets (``download=True`` where there is internet) and ``ImageFolder`` trees
(checked up front by ``osr.train.folder_check``).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from osr.images import IMAGE_EXTENSIONS, resize_for_model  # noqa: F401  (one list for training and serving)

from .choices import DATASETS, DEFAULT_IMAGE_SIZE


# Where each pack lives under --data-root, and how to get it.
_PACKS = {
    "cifar10": ("cifar10", "train_part*.npz", "test.npz"),
    "tiny_imagenet": ("tiny_imagenet", "train_known_union_part*.npz", "val.npz"),
}
_HOW_TO_GET = (
    "Point --data-root (or OSR_DATA_ROOT) at a folder holding {want}; with internet, --download fetches "
    "CIFAR-10 and MNIST through torchvision instead. README.md, section '1. Train', says where each dataset "
    "comes from and how to make the packs."
)


class DataError(RuntimeError):
    """The data asked for is missing or malformed; the message says where it was expected."""


@dataclass
class OpenSetData:
    """One open-set split, ready to train and evaluate on. Labels are re-indexed 0..K-1."""

    dataset: str
    split: int
    classes: list[str]
    image_size: int
    train_x: np.ndarray
    train_y: np.ndarray
    calib_x: np.ndarray
    calib_y: np.ndarray
    calib_indices: np.ndarray  # indices into the source's full training set
    test_known_x: np.ndarray
    test_known_y: np.ndarray
    test_unknown_x: np.ndarray
    known_source_labels: list[int] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalize_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images, on the 0..1 scale."""
        x = self.train_x.reshape(-1, 3).astype(np.float64) / 255.0
        return x.mean(0).round(4).tolist(), x.std(0).round(4).tolist()


def load_splits() -> dict:
    """The published open-set class lists (ARPL / Vaze et al.), bundled with the package."""
    return json.loads(resources.files("osr.train").joinpath("osr_splits.json").read_text())


def known_unknown(dataset: str, split: int) -> tuple[list[int], list[int], list[str]]:
    """Known and unknown source labels for a split, and the known class names in split order."""
    splits = load_splits()
    lists = splits[dataset]
    if not 0 <= split < len(lists):
        raise ValueError(f"split {split} does not exist for {dataset}: valid splits are 0..{len(lists) - 1}")
    known, unknown = list(lists[split]["known"]), list(lists[split]["unknown"])
    if dataset == "cifar10":
        names = [splits["cifar10_class_names"][i] for i in known]
    elif dataset == "tiny_imagenet":
        words = splits.get("tiny_imagenet_words")
        wnids = splits["tiny_imagenet_wnids_sorted"]
        names = [f"{wnids[i]} {words[i]}" if isinstance(words, list) else wnids[i] for i in known]
    else:
        names = [str(i) for i in known]
    return known, unknown, names


def reindex(labels: np.ndarray, known: list[int]) -> np.ndarray:
    """Map source labels of known classes to 0..K-1 in split-list order."""
    lut = np.full(int(max(labels.max(initial=0), max(known))) + 1, -1, dtype=np.int64)
    lut[np.asarray(known)] = np.arange(len(known))
    out = lut[labels]
    if (out < 0).any():
        raise ValueError("reindex() got labels of classes that are not known")
    return out


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into (keep, holdout), taking ``fraction`` of every class (at least one)."""
    rng = np.random.default_rng(seed)
    keep, hold = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_hold = max(1, int(round(fraction * len(idx)))) if fraction > 0 else 0
        hold.append(idx[:n_hold])
        keep.append(idx[n_hold:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(hold))


# ---------------------------------------------------------------- image decoding and resizing


def eval_resize(image: Image.Image, image_size: int) -> np.ndarray:
    """The evaluation resize rule ("shorter_side_center_crop", ``osr.images.resize_for_model``):
    shorter side to ``image_size`` with PIL bilinear, then a centre crop. Serving uses the same."""
    return resize_for_model(image.convert("RGB"), image_size)


class JpegPack:
    """A JPEG-pack ``.npz`` (concatenated JPEG bytes + offsets + labels), decoded lazily."""

    def __init__(self, paths: Iterable[Path]):
        self.paths = list(paths)
        blobs, offsets, labels, base = [], [], [], 0
        for p in self.paths:
            d = np.load(p)
            blobs.append(d["jpeg"])
            offsets.append(d["offsets"][:-1] + base)
            labels.append(d["labels"].astype(np.int64))
            base += len(d["jpeg"])
        self.jpeg = np.concatenate(blobs)
        self.offsets = np.concatenate([*offsets, [base]])
        self.labels = np.concatenate(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, i: int) -> bytes:
        """Image ``i`` as its stored JPEG file bytes."""
        return self.jpeg[self.offsets[i] : self.offsets[i + 1]].tobytes()

    def decode(self, indices: np.ndarray, image_size: int) -> np.ndarray:
        out = np.empty((len(indices), image_size, image_size, 3), dtype=np.uint8)
        for j, i in enumerate(indices):
            out[j] = eval_resize(Image.open(io.BytesIO(self.raw(i))), image_size)
        return out


# ---------------------------------------------------------------- sources


@dataclass
class _Source:
    """Full training and test sets of a dataset, as decoders over source label arrays."""

    train_labels: np.ndarray
    test_labels: np.ndarray
    decode_train: object  # Callable[[np.ndarray, int], np.ndarray]
    decode_test: object


def _array_decoder(x: np.ndarray):
    def decode(indices: np.ndarray, image_size: int) -> np.ndarray:
        sel = x[indices]
        if sel.ndim == 3:  # greyscale (MNIST)
            sel = np.repeat(sel[..., None], 3, axis=-1)
        if sel.shape[1] == image_size and sel.shape[2] == image_size:
            return np.ascontiguousarray(sel)
        return np.stack([eval_resize(Image.fromarray(im), image_size) for im in sel]) if len(sel) else (
            np.empty((0, image_size, image_size, 3), np.uint8))

    return decode


def _pack_source(dataset: str, root: Path) -> _Source | None:
    folder, train_glob, test_name = _PACKS[dataset]
    train_paths = sorted((root / folder).glob(train_glob))
    test_path = root / folder / test_name
    if not train_paths or not test_path.exists():
        return None
    train, test = JpegPack(train_paths), JpegPack([test_path])
    return _Source(train.labels, test.labels, train.decode, test.decode)


def _mnist_source(root: Path) -> _Source | None:
    path = root / "mnist" / "mnist.npz"
    if not path.exists():
        return None
    d = np.load(path)
    return _Source(d["y_train"].astype(np.int64), d["y_test"].astype(np.int64),
                   _array_decoder(d["x_train"]), _array_decoder(d["x_test"]))


def _torchvision_source(dataset: str, root: Path) -> _Source:
    import torchvision.datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "mnist": tvd.MNIST}.get(dataset)
    if cls is None:
        raise DataError(f"torchvision has no {dataset}; use the JPEG packs or an ImageFolder tree")
    try:
        train = cls(str(root / "torchvision"), train=True, download=True)
        test = cls(str(root / "torchvision"), train=False, download=True)
    except Exception as e:  # network errors come in many types
        raise DataError(f"torchvision could not download {dataset} into {root / 'torchvision'}: {e}") from e
    tx, ty = np.asarray(train.data), np.asarray(train.targets, dtype=np.int64)
    vx, vy = np.asarray(test.data), np.asarray(test.targets, dtype=np.int64)
    return _Source(ty, vy, _array_decoder(tx), _array_decoder(vx))


def _source(dataset: str, root: Path, download: bool) -> _Source:
    src = _mnist_source(root) if dataset == "mnist" else _pack_source(dataset, root)
    if src is not None:
        return src
    if download:
        return _torchvision_source(dataset, root)
    want = {
        "cifar10": f"{root / 'cifar10'}/train_part*.npz and test.npz",
        "tiny_imagenet": f"{root / 'tiny_imagenet'}/train_known_union_part*.npz and val.npz",
        "mnist": f"{root / 'mnist' / 'mnist.npz'}",
    }[dataset]
    raise DataError(f"{dataset} data not found under {root}. " + _HOW_TO_GET.format(want=want))


# A third word in the subset draw's seed, so that no subset seed draws with the stream of another use
# (the hold-out's default_rng(split_seed), the older cap's default_rng(split_seed + 1)).
_SUBSET_TAG = 0x5B5E7


def _per_class_cap(labels: np.ndarray, positions: np.ndarray, cap: int | None, seed: int,
                   subset_seed: int | None = None) -> np.ndarray:
    """At most ``cap`` of ``positions`` per class, drawn at random. ``subset_seed`` None is the draw every
    run made before it existed (seed + 1); an integer draws another subset of the same positions. For one
    seed the draw of a smaller cap is the first part of a larger one's (a class's permutation does not
    depend on the cap), so a teacher on 500 images per class saw the 150 of its students of that draw."""
    if cap is None:
        return positions
    if subset_seed is not None and subset_seed < 0:
        raise ValueError(f"subset_seed must be a non-negative integer or None, got {subset_seed}")
    rng = np.random.default_rng(seed + 1 if subset_seed is None else [seed, subset_seed, _SUBSET_TAG])
    out = [rng.permutation(positions[labels[positions] == c])[:cap] for c in np.unique(labels[positions])]
    return np.sort(np.concatenate(out)) if out else positions


def load_open_set(
    dataset: str,
    split: int = 0,
    data_root: str | os.PathLike = "data",
    *,
    image_size: int | None = None,
    calib_fraction: float = 0.1,
    split_seed: int = 0,
    max_train_per_class: int | None = None,
    max_test_per_class: int | None = None,
    download: bool = False,
    skip_bad_images: bool = False,
    subset_seed: int | None = None,
) -> OpenSetData:
    """Build one open-set split. The calibration hold-out is drawn first, from all training
    images of each known class, so it never depends on ``max_train_per_class``; ``subset_seed``
    picks which ``max_train_per_class`` images of the rest are drawn (None: the draw of
    ``split_seed``, as before the knob existed), and never changes the hold-out or the test sets."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: valid datasets are {', '.join(DATASETS)}")
    if not 0.0 <= calib_fraction < 1.0:
        raise ValueError(f"calib_fraction must be in [0, 1), got {calib_fraction}")
    root = Path(data_root)
    size = image_size or DEFAULT_IMAGE_SIZE[dataset]
    if dataset == "imagefolder":
        return _load_imagefolder(root, size, calib_fraction, split_seed, max_train_per_class, max_test_per_class,
                                 skip_bad_images, subset_seed)

    known, unknown, names = known_unknown(dataset, split)
    src = _source(dataset, root, download)
    pool = np.flatnonzero(np.isin(src.train_labels, known))
    if len(pool) == 0:
        raise DataError(f"no training images of the known classes {known} under {root}")
    keep, hold = stratified_holdout(src.train_labels[pool], calib_fraction, split_seed)
    train_idx = _per_class_cap(src.train_labels, pool[keep], max_train_per_class, split_seed, subset_seed)
    calib_idx = pool[hold]
    tk = _per_class_cap(src.test_labels, np.flatnonzero(np.isin(src.test_labels, known)), max_test_per_class, split_seed)
    tu = _per_class_cap(src.test_labels, np.flatnonzero(np.isin(src.test_labels, unknown)), max_test_per_class, split_seed)
    return OpenSetData(
        dataset=dataset, split=split, classes=names, image_size=size,
        train_x=src.decode_train(train_idx, size), train_y=reindex(src.train_labels[train_idx], known),
        calib_x=src.decode_train(calib_idx, size), calib_y=reindex(src.train_labels[calib_idx], known),
        calib_indices=calib_idx,
        test_known_x=src.decode_test(tk, size), test_known_y=reindex(src.test_labels[tk], known),
        test_unknown_x=src.decode_test(tu, size), known_source_labels=known,
    )


def _load_imagefolder(root: Path, size: int, calib_fraction: float, seed: int,
                      max_train: int | None, max_test: int | None, skip_bad_images: bool = False,
                      subset_seed: int | None = None) -> OpenSetData:
    """``root/train/<class>/*``, ``root/test/<class>/*`` and an optional ``root/unknown/**``
    (images of classes the model must reject, for evaluation only).

    The tree is checked first (``osr.train.folder_check``) and every file is decoded before the
    hold-out is drawn, so a bad file is named with its path, or left out everywhere alike
    (``skip_bad_images``) and the calibration indices stay those of the decodable files."""
    from .folder_check import check_calibration, check_classes_after_decoding, decode_images, report_bad_images, scan_tree

    tree = scan_tree(root)
    classes = tree.classes
    train_paths = [path for c in classes for path in tree.train[c]]
    train_labels = np.repeat(np.arange(len(classes)), [len(tree.train[c]) for c in classes])
    test_paths = [path for c in classes for path in tree.test[c]]
    test_labels = np.repeat(np.arange(len(classes)), [len(tree.test[c]) for c in classes])
    train_all, train_good, bad = decode_images(train_paths, size)
    test_all, test_good, bad_test = decode_images(test_paths, size)
    unknown_all, _, bad_unknown = decode_images(tree.unknown, size)
    report_bad_images(bad + bad_test + bad_unknown, skip_bad_images)

    labels = train_labels[train_good]
    test_labels = test_labels[test_good]
    check_classes_after_decoding(classes, np.bincount(labels, minlength=len(classes)).tolist(),
                                 np.bincount(test_labels, minlength=len(classes)).tolist())
    keep, hold = stratified_holdout(labels, calib_fraction, seed)
    check_calibration(classes, np.bincount(labels, minlength=len(classes)).tolist(),
                      np.bincount(labels[hold], minlength=len(classes)).tolist(), calib_fraction)
    keep = _per_class_cap(labels, keep, max_train, seed, subset_seed)
    # max_test: the first images of each class (sorted by path), as before the check existed
    test_keep = np.concatenate([np.flatnonzero(test_labels == k)[: max_test or None] for k in range(len(classes))])
    return OpenSetData(
        dataset="imagefolder", split=0, classes=classes, image_size=size,
        train_x=train_all[keep], train_y=labels[keep],
        calib_x=train_all[hold], calib_y=labels[hold], calib_indices=hold,
        test_known_x=test_all[test_keep], test_known_y=test_labels[test_keep].astype(np.int64),
        test_unknown_x=unknown_all[: max_test or None],
        known_source_labels=list(range(len(classes))),
    )


def open_set_from_config(config: dict, data_root: str | os.PathLike | None = None) -> OpenSetData:
    """Rebuild the data of a training run from its saved config (export uses this)."""
    return load_open_set(
        config["dataset"], config["split"], data_root or config["data_root"],
        image_size=config.get("image_size"), calib_fraction=config["calib_fraction"],
        split_seed=config["split_seed"], max_train_per_class=config.get("max_train_per_class"),
        max_test_per_class=config.get("max_test_per_class"), download=config.get("download", False),
        skip_bad_images=config.get("skip_bad_images", False), subset_seed=config.get("subset_seed"),
    )
