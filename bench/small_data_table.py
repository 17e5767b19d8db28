"""The issue-21 table: frozen ImageNet features (best probe over input sizes), the old README recipe
and the new one, per small-data task, from the committed results of bench/small_data_recipes.sh and
bench/probe_study.py (frozen_probe.jsonl).

    python bench/small_data_table.py [bench/results/small-data]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TASKS = ("quickstart", "cifar10-450", "mnist-450")
RECIPES = {"old": "old README recipe (fine-tuned, max-logit)",
           "new": "new: same network, fused with frozen-backbone kNN (k 5)",
           "auto": "same network, --score auto (frozen-backbone kNN candidates)"}


def frozen_best(rows: list[dict], task: str) -> dict | None:
    """The frozen probe with the best test AUROC over sizes and probes (linear head C=0.1, kNN k=5)."""
    best = None
    for row in rows:
        if not row["features"].startswith(task + "-efficientnet_lite0"):
            continue
        size = row["features"].rsplit("-", 1)[1]
        for probe, accuracy in (("lr0.1_maxlogit", row["accuracy_lr_C0.1"]), ("knn5", row["accuracy_lr_C0.1"])):
            cand = {"what": f"frozen Lite0 at {size} px, {'linear head max-logit' if probe.startswith('lr') else 'kNN k=5'}",
                    "accuracy": accuracy, "auroc": row[f"auroc_{probe}"], "rejected": row[f"rej_{probe}"], "frr": None}
            if best is None or cand["auroc"] > best["auroc"]:
                best = cand
    return best


def exported(root: Path, task: str, recipe: str) -> dict | None:
    path = root / f"{task}-{recipe}" / "report.json"
    if not path.exists():
        return None
    r = json.loads(path.read_text())
    fr = r["false_rejection"]
    read = fr.get("band_to_read") or {}
    chosen = r.get("score_selection", {}).get("chosen")
    return {"what": RECIPES[recipe] + (f": chose {chosen}" if recipe == "auto" and chosen else ""),
            "accuracy": r["accuracy"], "auroc": r["auroc"], "rejected": r["unknown_rejected_rate"],
            "frr": f"{fr['false_rejection_rate']:.3f} in [{read['band'][0]:.3f}, {read['band'][1]:.3f}]"
                   + ("" if read.get("verdict") == "ok" else f" ({read.get('verdict')})") if read else
                   f"{fr['false_rejection_rate']:.3f}"}


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/small-data")
    rows = [json.loads(line) for line in (root / "frozen_probe.jsonl").read_text().splitlines() if line.strip()]
    print("| task | what | accuracy | AUROC | unknowns rejected at alpha 0.05 | realised FRR in its band |")
    print("|---|---|---|---|---|---|")
    for task in TASKS:
        for row in [frozen_best(rows, task)] + [exported(root, task, r) for r in RECIPES]:
            if row:
                frr = row["frr"] or "(probe: calibration threshold only)"
                print(f"| {task} | {row['what']} | {row['accuracy']:.3f} | {row['auroc']:.3f} | {row['rejected']:.3f} | {frr} |")


if __name__ == "__main__":
    main()
