"""Write real CIFAR-10 JPEGs as an ImageFolder tree, to try the README's "your own classes" quick start.

    python bench/make_folder_demo.py --data-root ../shared/datasets --out demo_data

Known classes (default: bird, cat, dog, ship: the ones split 0 leaves unknown, so the bundled
model has never trained on them): ``--train-per-class`` training images each under
``train/<class>/`` and ``--test-per-class`` test images under ``test/<class>/``; the other six
classes go to ``unknown/`` (``--unknown-per-class`` test images each). Original JPEG bytes,
first images of each class in the pack order (no selection).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from osr.train.data import JpegPack, load_splits


def write_class(pack: JpegPack, label: int, count: int, folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    indices = np.flatnonzero(pack.labels == label)[:count]
    for i in indices:
        (folder / f"{int(i):05d}.jpg").write_bytes(pack.raw(int(i)))
    return len(indices)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="../shared/datasets")
    p.add_argument("--out", default="demo_data")
    p.add_argument("--classes", nargs="+", default=["bird", "cat", "dog", "ship"])
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--unknown-per-class", type=int, default=100)
    a = p.parse_args()
    names = load_splits()["cifar10_class_names"]
    root = Path(a.data_root) / "cifar10"
    train = JpegPack(sorted(root.glob("train_part*.npz")))
    test = JpegPack([root / "test.npz"])
    out = Path(a.out)
    for name in a.classes:
        label = names.index(name)
        n_train = write_class(train, label, a.train_per_class, out / "train" / name)
        n_test = write_class(test, label, a.test_per_class, out / "test" / name)
        print(f"{name}: {n_train} train, {n_test} test")
    others = [n for n in names if n not in a.classes]
    for name in others:
        write_class(test, names.index(name), a.unknown_per_class, out / "unknown" / name)
    print(f"unknown: {a.unknown_per_class} test images each of {', '.join(others)} -> {out / 'unknown'}")


if __name__ == "__main__":
    main()
