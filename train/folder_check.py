"""Check an ImageFolder tree before training, so a mistake costs seconds and not a whole run.

Layout: ``ROOT/train/<class>/**``, ``ROOT/test/<class>/**`` with the same class names, optional
``ROOT/unknown/**`` (images of classes the model must reject, for evaluation only). Checked, all
at once with every problem named: the folders exist, at least two classes, the class names of
train/ and test/ match, every class has training images and at least one test image, every image
file decodes (the bad ones are named with their path and reason, or skipped with a warning under
``--skip-bad-images``), and the calibration hold-out is large enough for osr-export's default
alpha (a warning naming the ``--calib-fraction`` that would be).

Problems are DataError (osr-train prints them and exits before training); notes go to the
``osr.train`` logger as warnings.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from osr.images import DecodeError, decode_file, resize_for_model

from .data import IMAGE_EXTENSIONS, DataError, stratified_holdout

log = logging.getLogger("osr.train")

# osr-export's default --alpha; tests/test_folder_check.py checks that it and the rule below agree
# with osr.export (train must not import export: the dependency goes export -> train).
EXPORT_DEFAULT_ALPHA = 0.05


def min_calibration_size(alpha: float) -> int:
    """Fewest calibration images for a split-conformal threshold at `alpha`: the smallest n with
    floor(alpha * (n + 1)) >= 1, i.e. ceil(1 / alpha) - 1 (osr.export.conformal's rule)."""
    n = max(math.ceil(1.0 / alpha) - 1, 1)
    while math.floor(alpha * (n + 1) + 1e-9) < 1:
        n += 1
    return n
_LAYOUT = "expected ROOT/train/<class>/<images>, ROOT/test/<class>/<images> (same class names) and optionally ROOT/unknown/"
_SHOW = 10  # bad files named in full; the rest are counted


@dataclass
class FolderTree:
    """The image files of an ImageFolder tree, in the order the loader indexes them."""

    root: Path
    classes: list[str]
    train: dict[str, list[Path]]
    test: dict[str, list[Path]]
    unknown: list[Path]


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (by extension, any depth), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _class_folders(folder: Path) -> list[str]:
    # Hidden folders (.ipynb_checkpoints, .DS_Store-like) are never classes.
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _names(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names)


def _stray_files(folder: Path) -> list[Path]:
    """Files directly in train/ or test/ (outside any class folder): the loader ignores them."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _non_images(folders: list[Path]) -> list[Path]:
    found = []
    for folder in folders:
        found += [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() not in IMAGE_EXTENSIONS
                  and not p.name.startswith(".")]
    return sorted(found)


def scan_tree(root: Path) -> FolderTree:
    """List the tree and check its layout; raises DataError naming every problem found."""
    root = Path(root)
    train_dir, test_dir, unknown_dir = root / "train", root / "test", root / "unknown"
    if not root.is_dir():
        raise DataError(f"ImageFolder root {root} does not exist ({_LAYOUT})")
    missing = [str(d) for d in (train_dir, test_dir) if not d.is_dir()]
    if missing:
        raise DataError(f"ImageFolder data: {' and '.join(missing)} missing ({_LAYOUT}); test/ is the known "
                        "test set that accuracy and AUROC are measured on")
    classes = _class_folders(train_dir)
    test_classes = _class_folders(test_dir)
    problems = []
    if len(classes) < 2:
        problems.append(f"{train_dir} must hold at least two class folders, found {classes}")
    only_test = [c for c in test_classes if c not in classes]
    only_train = [c for c in classes if c not in test_classes]
    if only_test:
        problems.append(f"class folders in {test_dir} but not in {train_dir}: {_names(only_test)} (names must match "
                        "exactly, case included)")
    if only_train:
        problems.append(f"class folders in {train_dir} without a test folder in {test_dir}: {_names(only_train)}")
    train = {c: list_images(train_dir / c) for c in classes}
    test = {c: list_images(test_dir / c) for c in classes if c in test_classes}
    no_train = [c for c, files in train.items() if not files]
    no_test = [c for c, files in test.items() if not files]
    if no_train:
        problems.append(f"no training images in {train_dir}/ for {_names(no_train)}")
    if no_test:
        problems.append(f"no test images in {test_dir}/ for {_names(no_test)} (at least one test image per class)")
    if problems:
        raise DataError("ImageFolder data " + str(root) + ":\n  " + "\n  ".join(problems))

    unknown = list_images(unknown_dir) if unknown_dir.is_dir() else []
    if unknown_dir.is_dir() and not unknown:
        log.warning("%s holds no images: AUROC and the other open-set metrics need unknown images", unknown_dir)
    stray = _stray_files(train_dir) + _stray_files(test_dir)
    if stray:
        log.warning("ignored %d file(s) outside the class folders, e.g. %s", len(stray), stray[0])
    others = _non_images([train_dir, test_dir] + ([unknown_dir] if unknown_dir.is_dir() else []))
    if others:
        log.warning("ignored %d file(s) without an image extension (%s), e.g. %s", len(others),
                    " ".join(sorted(IMAGE_EXTENSIONS)), others[0])
    return FolderTree(root, classes, train, test, unknown)


def decode_images(paths: list[Path], size: int) -> tuple[np.ndarray, list[int], list[tuple[Path, str]]]:
    """Decode and resize every file: (images of the good ones, their positions, [(path, reason)] of the bad)."""
    images, good, bad = [], [], []
    for position, path in enumerate(paths):
        try:
            images.append(resize_for_model(decode_file(path), size))
        except DecodeError as error:
            bad.append((path, str(error)))
        else:
            good.append(position)
    stacked = np.stack(images) if images else np.empty((0, size, size, 3), np.uint8)
    return stacked, good, bad


def report_bad_images(bad: list[tuple[Path, str]], skip: bool) -> None:
    """DataError naming the files that do not decode, or (skip) one warning naming them."""
    if not bad:
        return
    lines = [f"{path}: {reason}" for path, reason in bad[:_SHOW]]
    if len(bad) > _SHOW:
        lines.append(f"... and {len(bad) - _SHOW} more")
    if not skip:
        raise DataError(f"{len(bad)} image file(s) do not decode (fix or remove them, or pass --skip-bad-images "
                        "to train without them):\n  " + "\n  ".join(lines))
    log.warning("--skip-bad-images: left out %d image file(s) that do not decode:\n  %s", len(bad), "\n  ".join(lines))


def image_sizes(paths: list[Path]) -> Counter:
    """(width, height) -> number of files, from the file headers (nothing is decoded); unreadable files are left out."""
    sizes: Counter = Counter()
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes[image.size] += 1
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return sizes


def resize_note(root: Path, size: int, given: int | None = None, input_size: int | None = None) -> str | None:
    """One line saying that the training images of ``root/train`` are resized to ``size`` px, or None when
    they are all ``size`` x ``size`` already. ``given``: the --image-size the user passed (None: the default)."""
    train = Path(root) / "train"
    if not train.is_dir():
        return None
    sizes = image_sizes([path for c in _class_folders(train) for path in list_images(train / c)])
    total = sum(sizes.values())
    if total == 0 or set(sizes) == {(size, size)}:
        return None
    (width, height), count = sizes.most_common(1)[0]
    found = (f"are {width}x{height} px" if count == total else
             f"come in {len(sizes)} sizes (most often {width}x{height} px: {count} of {total})")
    why = f"--image-size {size}" + ("" if given else ", the default for image folders")
    text = (f"the training images in {train} {found} and are resized to {size}x{size} px ({why}; shorter side to "
            f"{size} px, then a centre crop; test, calibration and served images alike)")
    if input_size and input_size != size:
        text += f", then to {input_size} px inside the network (--input-size)"
    if count == total and width == height:
        text += f"; pass --image-size {width} to train at their own size"
    return text


def holdout_size(counts: list[int], fraction: float) -> int:
    """How many images the calibration hold-out takes from classes of these sizes (data.stratified_holdout's rule)."""
    labels = np.repeat(np.arange(len(counts)), counts)
    return len(stratified_holdout(labels, fraction, seed=0)[1])


def _fraction_for(counts: list[int], needed: int) -> float | None:
    """The smallest --calib-fraction (in steps of 0.01, up to 0.5) whose hold-out has `needed` images."""
    for percent in range(1, 51):
        if holdout_size(counts, percent / 100) >= needed:
            return percent / 100
    return None


def check_classes_after_decoding(classes: list[str], train_counts: list[int], test_counts: list[int]) -> None:
    """After bad files are skipped: every class still has training and test images."""
    empty_train = [c for c, n in zip(classes, train_counts) if n == 0]
    empty_test = [c for c, n in zip(classes, test_counts) if n == 0]
    problems = []
    if empty_train:
        problems.append(f"no decodable training images for {_names(empty_train)}")
    if empty_test:
        problems.append(f"no decodable test images for {_names(empty_test)} (at least one test image per class)")
    if problems:
        raise DataError("ImageFolder data: " + "; ".join(problems))


def check_calibration(classes: list[str], counts: list[int], calib_counts: list[int], fraction: float,
                      alpha: float = EXPORT_DEFAULT_ALPHA) -> None:
    """Warn when the hold-out is too small to export at `alpha`; DataError when a class keeps no training image."""
    starved = [c for c, n, held in zip(classes, counts, calib_counts) if n - held < 1]
    if starved:
        raise DataError(f"--calib-fraction {fraction} holds out every training image of {_names(starved)}; "
                        "add images to these classes (each needs at least 2) or lower --calib-fraction")
    held, needed = sum(calib_counts), min_calibration_size(alpha)
    if held >= needed:
        return
    advice = []
    better = _fraction_for(counts, needed)
    if better is not None and better > fraction:
        advice.append(f"train with --calib-fraction {better:g}")
    if held > 0:
        advice.append(f"export with --alpha {math.ceil(100 / (held + 1)) / 100:g} or larger")
    advice.append("add training images")
    log.warning("the calibration hold-out has %d image(s) (--calib-fraction %g); osr-export's default --alpha %g "
                "needs at least %d: %s", held, fraction, alpha, needed, ", or ".join(advice))
