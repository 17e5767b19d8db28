"""The AD ablation table of one results group, in points, with every seed shown (issue 11's must-show):
accuracy and AUROC (mean ± std over seeds), paired deltas against CE, CE+CutMix and KD+CutMix, mean
max-logit on known test images, and each seed's accuracy / AUROC. Built on collect_results.

    python bench/ablation_table.py bench/results/regime/resnet18-w0.25-n150-e200-randaugment-false-batch-size-32
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from collect_results import collect, paired_deltas

AGAINST = ("CE", "CE+CutMix", "KD+CutMix")  # CE: does a variant reach its AUROC?


def points(values: list[float], signed: bool = False) -> str:
    return fraction([v * 100 for v in values], 1, signed)


def fraction(values: list[float], digits: int = 3, signed: bool = False) -> str:
    mean = f"{statistics.mean(values):{'+' if signed else ''}.{digits}f}"
    return mean + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def table(methods: dict) -> str:
    lines = ["| student | seeds | accuracy | AUROC | " + " | ".join(f"Δacc / ΔAUROC vs {a} (points)" for a in AGAINST)
             + " | mean max-logit known | per seed (accuracy / AUROC) |", "|---" * (6 + len(AGAINST)) + "|"]
    for label, runs in sorted(methods.items()):
        runs = sorted(runs, key=lambda r: r["seed"])
        cells = [label, str(len(runs)), fraction([r["accuracy"] for r in runs]),
                 fraction([r["auroc"] for r in runs])]
        for against in AGAINST:
            d = paired_deltas(methods, label, against)
            cells.append(f"{points(d['accuracy'], True)} / {points(d['auroc'], True)}" if d else "")
        cells.append(fraction([r["mean_max_logit_known"] for r in runs], 2))
        cells.append("; ".join(f"s{r['seed']} {r['accuracy']:.3f} / {r['auroc']:.3f}" for r in runs))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("group", type=Path, help="bench/results/<kind>/<group> folder of <run>/metrics.json")
    args = ap.parse_args()
    groups = collect(args.group.parent)
    print(table(groups[args.group.name]))


if __name__ == "__main__":
    main()
