"""Training throughput on this machine's CPU: images per second of CE and AD steps (forward,
backward, SGD update; bench/train_step_speed.py's runner) and of data loading (a DataLoader over
osr.train.trainer.AugmentedImages with osr.train.augment.train_transform on real CIFAR-10
training images: random crop, flip, RandAugment, collation), interleaved round robin, so the
share of a step that is data loading can be read off side by side.

    python bench/perf_train.py --arch classifier32 --width 0.25 --teacher-width 0.25

Defaults are the CPU recipe (classifier32 at width 0.25, teacher the same, batch 128,
--workers 0 as TrainConfig: augmentation in the training process). With p_mix = 0.5, AD
alternates ordinary and mixed steps; its average step is the mean of the two.
Writes bench/results/perf_train.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from osr.train.augment import DeviceBatches, train_transform
from osr.train.data import JpegPack
from osr.train.trainer import AugmentedImages, Normalize
from perf_common import CIFAR_TEST, REPOSITORY, fmt, round_robin, save, summary
from train_step_speed import add_model_args, step_runners


def cifar_train(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` images of CIFAR-10's training pack, decoded (the trainer decodes up front)."""
    pack = JpegPack([CIFAR_TEST.parent / "train_part1.npz"])
    x = pack.decode(np.arange(count), 32)  # CIFAR images are 32 px already: the resize is a no-op
    return x, (pack.labels[:count] % 6).astype(np.int64)


def batch_timer(loader):
    """A callable: seconds to get the next batch from ``loader``, starting a new epoch when one ends
    (the new epoch's iterator set-up is not counted as a batch)."""
    batches = iter(loader)

    def load_batch() -> float:
        nonlocal batches
        t0 = time.perf_counter()
        try:
            next(batches)
        except StopIteration:
            batches = iter(loader)
            t0 = time.perf_counter()
            next(batches)
        return time.perf_counter() - t0

    return load_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (TrainConfig default 0)")
    ap.add_argument("--images", type=int, default=2560, help="real training images in the loader")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    torch.manual_seed(0)
    classes = 6

    x_np, y_np = cifar_train(a.images)
    loader = DataLoader(AugmentedImages(x_np, y_np, train_transform(32)), batch_size=a.batch_size, shuffle=True,
                        drop_last=True, num_workers=a.workers, persistent_workers=a.workers > 0)
    # --batch-augment's loader (the trainer's DeviceBatches): the decoded set as one uint8 tensor,
    # crop/flip/RandAugment a whole batch at a time
    device_batches = DeviceBatches(torch.from_numpy(x_np).permute(0, 3, 1, 2), torch.from_numpy(y_np),
                                   RandomSampler(range(len(x_np))), a.batch_size, randaugment=True)
    load_batch, load_batch_augmented = batch_timer(loader), batch_timer(device_batches)

    manifest = json.loads((REPOSITORY / "cifar10-ad" / "1" / "manifest.json").read_text())
    norm = Normalize(manifest["normalize"]["mean"], manifest["normalize"]["std"])
    xb, yb = next(iter(loader))
    x = norm(xb)
    cases = {"data_loading": load_batch, "data_loading_batch_augment": load_batch_augmented,
             **step_runners(a, classes, x, yb, ["ce", "ad_ordinary_step", "ad_mixed_step"])}
    seconds = {name: summary(v) for name, v in round_robin(cases, a.rounds, warmup=2).items()}
    med = {name: s["median"] for name, s in seconds.items()}
    ad_avg = 0.5 * (med["ad_ordinary_step"] + med["ad_mixed_step"])
    out = {
        "args": vars(a) | {"out": str(a.out)}, "torch_threads": torch.get_num_threads(),
        "seconds_per_batch": seconds,
        "images_per_second": {name: a.batch_size / m for name, m in med.items()} | {"ad_average": a.batch_size / ad_avg},
        "ratio_ad_average_to_ce": ad_avg / med["ce"],
        "ratio_ad_mixed_to_ce": med["ad_mixed_step"] / med["ce"],
        "data_loading_share_of_ce_step": med["data_loading"] / (med["data_loading"] + med["ce"]),
        "data_loading_share_of_ad_step": med["data_loading"] / (med["data_loading"] + ad_avg),
        "batch_augment_loading_share_of_ce_step":
            med["data_loading_batch_augment"] / (med["data_loading_batch_augment"] + med["ce"]),
        "target": {"name": "AD step <= 1.7x CE step", "ratio_ad_average": ad_avg / med["ce"],
                   "ratio_ad_mixed": med["ad_mixed_step"] / med["ce"], "met": ad_avg / med["ce"] <= 1.7},
    }
    for name, s in seconds.items():
        print(f"{name:18s} {fmt(s, 1e3)} ms/batch  {a.batch_size / s['median']:7.1f} img/s")
    for k in ("ratio_ad_average_to_ce", "ratio_ad_mixed_to_ce", "data_loading_share_of_ce_step",
              "data_loading_share_of_ad_step", "batch_augment_loading_share_of_ce_step"):
        print(f"{k:32s} {out[k]:.2f}")
    save("perf_train", out, a.out)


if __name__ == "__main__":
    main()
