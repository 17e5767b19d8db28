"""Which known-ness score separates known from unknown test images best for a trained run?

Compares the logit scores the exported graph offers (max_logit, msp, energy) with feature-space
scores computed on the penultimate features (the classifier head's input): Mahalanobis distance to
the nearest class mean under a shared covariance (Lee et al. 2018), and the cosine distance to the
k-th nearest training feature (Sun et al. 2022). Statistics come from training images only.

    python bench/feature_scores.py runs/pretrained/cifar10-s0/teacher-lite0-128px [--train-per-class 1000] [--flip]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import nn

from osr.export.feature_bank import knn_similarity
from osr.train.checkpoint import load_checkpoint, model_from_checkpoint
from osr.train.data import open_set_from_config
from osr.train.metrics import auroc, known_score
from osr.train.pretrained import head_name
from osr.train.trainer import Normalize


@torch.no_grad()
def features_and_logits(model: nn.Module, norm: Normalize, x: np.ndarray, batch: int = 256, flip: bool = False):
    head = model.get_submodule(head_name(model))
    captured = []
    hook = head.register_forward_hook(lambda m, inp, out: captured.append(inp[0].float()))
    logits = []
    for i in range(0, len(x), batch):
        xb = norm(torch.from_numpy(x[i:i + batch]).permute(0, 3, 1, 2))
        logits.append(model(xb).float())
        if flip:  # the mirror image's logits and features, averaged with the image's
            f = captured.pop()
            logits[-1] = (logits[-1] + model(xb.flip(3)).float()) / 2
            captured[-1] = (captured[-1] + f) / 2
    hook.remove()
    return torch.cat(captured).numpy(), torch.cat(logits).numpy()


def mahalanobis_score(train_f, train_y, f) -> np.ndarray:
    """Minus the distance to the nearest class mean; the shared covariance is Ledoit-Wolf shrunk
    (the plain sample covariance of 1,280 partly dead features is near-singular: AUROC 0.50)."""
    means = np.stack([train_f[train_y == c].mean(0) for c in np.unique(train_y)])
    precision = LedoitWolf().fit(train_f - means[train_y]).precision_
    d = [np.einsum("nd,de,ne->n", f - m, precision, f - m) for m in means]
    return -np.min(np.stack(d, 1), 1)


def knn_score(train_f, f, k: int) -> np.ndarray:
    """The exported graph's kNN score (export/feature_bank.py) against every training feature."""
    bank = nn.functional.normalize(torch.from_numpy(train_f).float(), dim=1)
    return knn_similarity(torch.from_numpy(f), bank, k).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--train-per-class", type=int, default=1000)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--flip", action="store_true", help="test-time flip: average each image with its mirror")
    ap.add_argument("--cache", help="npz file: features are read from it if present, else written to it")
    args = ap.parse_args()
    ckpt = load_checkpoint(args.run)
    model = model_from_checkpoint(ckpt)
    data = open_set_from_config(ckpt["config"], args.data_root)
    norm = Normalize(ckpt["normalize"]["mean"], ckpt["normalize"]["std"])
    rng = np.random.default_rng(0)
    pick = np.concatenate([rng.permutation(np.flatnonzero(data.train_y == c))[:args.train_per_class]
                           for c in range(data.num_classes)])
    t0 = time.time()
    ty = data.train_y[pick]
    if args.cache and Path(args.cache).exists():
        c = np.load(args.cache)
        tf, kf, kl, uf, ul = (c[k] for k in ("tf", "kf", "kl", "uf", "ul"))
    else:
        tf, _ = features_and_logits(model, norm, data.train_x[pick], flip=args.flip)
        kf, kl = features_and_logits(model, norm, data.test_known_x, flip=args.flip)
        uf, ul = features_and_logits(model, norm, data.test_unknown_x, flip=args.flip)
        if args.cache:
            np.savez(args.cache, tf=tf, kf=kf, kl=kl, uf=uf, ul=ul)
    out = {"run": args.run, "flip": args.flip, "train_features": len(tf), "feature_dim": tf.shape[1],
           "accuracy": float((kl.argmax(1) == data.test_known_y).mean()), "forward_seconds": round(time.time() - t0, 1)}
    for kind in ("max_logit", "msp", "energy"):
        out[f"auroc_{kind}"] = auroc(known_score(kl, kind), known_score(ul, kind))
    out["auroc_mahalanobis"] = auroc(mahalanobis_score(tf, ty, kf), mahalanobis_score(tf, ty, uf))
    for k in (1, 10, 50):
        out[f"auroc_knn{k}"] = auroc(knn_score(tf, kf, k), knn_score(tf, uf, k))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
