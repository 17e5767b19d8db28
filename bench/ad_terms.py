"""Which loss term moves the logit scale? Per-term training losses of the runs of one setting.

For every method of a group (bench/results/<...>/<group>/<run>/{metrics.json,log.jsonl}), the
mean over the last N epochs and over seeds of each logged term (osr-train logs per epoch the mean
of every loss term, the learnable fraction and the mean max-logit, apart for ordinary and mixed
steps), beside the mean max-logit on the known test images. Labels as in bench/collect_results.py.

    python bench/ad_terms.py bench/results/regime/resnet18-w0.25-n150-e200-randaugment-false-batch-size-32 [--last 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from collect_results import method_label  # noqa: E402  (bench/ is the script's folder)

COLUMNS = [("mixed", "loss_ce"), ("mixed", "loss_dist"), ("mixed", "loss_dist_raw_pair"), ("mixed", "loss_learnable"),
           ("mixed", "loss_hard_soft_ce"), ("mixed", "learnable_fraction"), ("mixed", "max_logit"),
           ("ordinary", "loss_ce"), ("ordinary", "loss_dist"), ("ordinary", "max_logit")]


def run_terms(run: Path, last: int) -> dict[tuple[str, str], float]:
    """Mean of each (kind, term) over the last ``last`` epochs of one run."""
    epochs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()][-last:]
    values: dict = defaultdict(list)
    for e in epochs:
        for kind, terms in e.get("terms", {}).items():
            for name, v in terms.items():
                values[(kind, name)].append(v)
    return {k: statistics.mean(v) for k, v in values.items()}


def table(group: Path, last: int) -> str:
    rows: dict = defaultdict(list)
    for metrics in sorted(group.glob("*/metrics.json")):
        m = json.loads(metrics.read_text())
        if m["epoch"] != m["config"]["epochs"]:
            continue
        terms = run_terms(metrics.parent, last)
        terms[("test", "max_logit_known")] = m["metrics"]["mean_max_logit_known"]
        rows[method_label(m["config"])].append(terms)
    cols = COLUMNS + [("test", "max_logit_known")]
    present = [c for c in cols if any(c in t for runs in rows.values() for t in runs)]
    lines = ["| method | runs | " + " | ".join(f"{k} {n.removeprefix('loss_')}" for k, n in present) + " |",
             "|---|---|" + "---|" * len(present)]
    for label, runs in sorted(rows.items()):
        cells = []
        for c in present:
            v = [t[c] for t in runs if c in t]
            cells.append(f"{statistics.mean(v):.3f}" if v else "")
        lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nMeans over the last {last} epochs of each run, then over its seeds; test max_logit_known: final model.\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("group", type=Path)
    ap.add_argument("--last", type=int, default=20, help="epochs averaged at the end of each run")
    a = ap.parse_args()
    print(table(a.group, a.last))


if __name__ == "__main__":
    main()
