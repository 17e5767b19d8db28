"""Training curves: runs/<run>/curves.png (loss, accuracy, AUROC per epoch) from log.jsonl.

The trainer rewrites the PNG after every epoch, so it can be watched during a run; it is also a
command for any run folder: ``python -m osr.train.curves runs/<run> [...]``. matplotlib is
imported lazily (the Agg renderer through ``matplotlib.figure.Figure``, no pyplot state); without
it the PNG is skipped with a one-line note, and a plot never stops a training run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from osr.atomic import atomic_path

CURVES_FILE = "curves.png"
_noted = False


def read_log(path: Path) -> list[dict]:
    """The epoch lines of log.jsonl, one per epoch (the last one wins), in epoch order."""
    by_epoch: dict[int, dict] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            by_epoch[int(entry["epoch"])] = entry
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _series(entries: list[dict], *keys: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for entry in entries:
        value = entry
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            xs.append(entry["epoch"])
            ys.append(float(value))
    return xs, ys


def plot_curves(entries: list[dict], path: Path, title: str = "") -> Path:
    """Three panels (training loss; closed-set accuracy; AUROC and OSCR) written atomically to `path`."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 3.6), layout="constrained")
    loss_axes, accuracy_axes, auroc_axes = figure.subplots(1, 3)
    panels = (
        (loss_axes, "training loss", [("train_loss", ("train_loss",))]),
        (accuracy_axes, "closed-set accuracy (known test)", [("accuracy", ("test", "accuracy"))]),
        (auroc_axes, "open-set (known vs unknown test)", [("AUROC", ("test", "auroc")), ("OSCR", ("test", "oscr"))]),
    )
    for axes, name, lines in panels:
        for label, keys in lines:
            xs, ys = _series(entries, *keys)
            if xs:
                axes.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        axes.set_title(name, fontsize=10)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        if len(lines) > 1 and axes.get_lines():
            axes.legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    return path


def write_curves(run_dir: str | os.PathLike) -> Path | None:
    """<run_dir>/curves.png from <run_dir>/log.jsonl; None (with a one-line note) when it cannot be drawn."""
    global _noted
    run_dir = Path(run_dir)
    try:
        entries = read_log(run_dir / "log.jsonl")
        return plot_curves(entries, run_dir / CURVES_FILE, title=run_dir.name)
    except ImportError:
        reason = "matplotlib is not installed (pip install matplotlib)"
    except (OSError, ValueError, KeyError) as error:  # a plot must never stop a training run
        reason = f"{type(error).__name__}: {error}"
    if not _noted:
        print(f"osr-train: note: no {run_dir / CURVES_FILE}: {reason}", file=sys.stderr)
        _noted = True
    return None


def main(argv: list[str] | None = None) -> int:
    folders = sys.argv[1:] if argv is None else argv
    if not folders:
        print("usage: python -m osr.train.curves RUN_DIR [RUN_DIR ...]", file=sys.stderr)
        return 2
    written = [write_curves(folder) for folder in folders]
    for path in written:
        if path is not None:
            print(path)
    return 0 if all(written) else 1


if __name__ == "__main__":
    sys.exit(main())
