"""Choose the kNN score's k and bank size for a run without touching its test set.

Known validation images: the run's calibration hold-out (never trained on). Unknown validation
images: training images of the split's unknown classes (1,000 per class by default; the test
set's unknown images are other images). The bank is drawn exactly as `osr-export --score knn`
draws it (osr.export.feature_bank, float16 unit rows, seed 0), features cut at the head as the
exported graph cuts them. Prints and writes, per (bank per class, k): validation AUROC and the
share of validation unknowns under the 5 % quantile of the known scores; max-logit for reference.

    python bench/knn_selection.py runs/pretrained/cifar10-s0/teacher-lite0-128px-e8-n0 \
        --out bench/results/knn-selection/cifar10-lite0-v3.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from osr.export.feature_bank import knn_similarity, pick_per_class, split_head
from osr.export.graph import OsrGraph
from osr.train.checkpoint import load_checkpoint, model_from_checkpoint
from osr.train.data import _source, known_unknown, open_set_from_config
from osr.train.metrics import auroc


@torch.no_grad()
def features_and_logits(body, head, graph: OsrGraph, images: np.ndarray, batch: int = 256):
    feats = [body(graph.normalise(torch.from_numpy(images[i:i + batch]))) for i in range(0, len(images), batch)]
    f = torch.cat(feats)
    return f, head(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--unknown-per-class", type=int, default=1000)
    ap.add_argument("--bank-per-class", type=int, nargs="+", default=[100, 200, 300, 400])
    ap.add_argument("--k", type=int, nargs="+", default=[1, 5, 10, 20, 50])
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    t0 = time.time()
    ckpt = load_checkpoint(args.run)
    config = ckpt["config"]
    data = open_set_from_config(config, args.data_root)
    _, unknown, _ = known_unknown(config["dataset"], config["split"])
    source = _source(config["dataset"], Path(args.data_root or config["data_root"]), False)
    rng = np.random.default_rng(0)
    per_class = [rng.permutation(np.flatnonzero(source.train_labels == c))[:args.unknown_per_class] for c in unknown]
    val_unknown = np.sort(np.concatenate(per_class))
    val_unknown_x = source.decode_train(val_unknown, data.image_size)

    model = model_from_checkpoint(ckpt).eval()
    graph = OsrGraph(model, ckpt["normalize"]["mean"], ckpt["normalize"]["std"], data.num_classes, 0.0, [0.0])
    body, head = split_head(model, graph.normalise(torch.from_numpy(data.calib_x[:2])))
    most = pick_per_class(data.train_y, max(args.bank_per_class))
    bank_f, _ = features_and_logits(body, head, graph, data.train_x[most])
    known_f, known_l = features_and_logits(body, head, graph, data.calib_x)
    unknown_f, unknown_l = features_and_logits(body, head, graph, val_unknown_x)

    def rejected(known: np.ndarray, unknown: np.ndarray) -> float:
        return float(np.mean(unknown < np.quantile(known, args.alpha)))

    ml_k, ml_u = known_l.max(1).values.numpy(), unknown_l.max(1).values.numpy()
    out = {"run": args.run, "known_validation": f"{len(known_f)} calibration images",
           "unknown_validation": f"{len(unknown_f)} training images of classes {unknown}",
           "max_logit": {"auroc": auroc(ml_k, ml_u), "rejected": rejected(ml_k, ml_u)}, "knn": []}
    print(f"max_logit: validation AUROC {out['max_logit']['auroc']:.4f}, rejected {out['max_logit']['rejected']:.4f}")
    for per_class in args.bank_per_class:
        # the same draw as the export's: pick_per_class is a prefix of each class's permutation
        rows = np.isin(most, pick_per_class(data.train_y, per_class))
        bank = torch.nn.functional.normalize(bank_f[torch.from_numpy(rows)], dim=1).half()  # as build_bank stores it
        for k in args.k:
            s_k, s_u = knn_similarity(known_f, bank, k).numpy(), knn_similarity(unknown_f, bank, k).numpy()
            row = {"bank_per_class": per_class, "bank_size": int(rows.sum()), "k": k,
                   "auroc": auroc(s_k, s_u), "rejected": rejected(s_k, s_u)}
            out["knn"].append(row)
            print(f"bank {per_class}/class, k {k}: validation AUROC {row['auroc']:.4f}, rejected {row['rejected']:.4f}")
    out["seconds"] = round(time.time() - t0, 1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
