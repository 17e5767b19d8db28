"""``osr-train``: the command-line entry point of the training module.

Only the config (stdlib and ``osr.train.choices``) is imported before the arguments are parsed,
so ``--help`` and argument errors answer without importing torch.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time

from .config import TrainConfig, config_from_args


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def done_summary(cfg: TrainConfig, metrics: dict, seconds: float) -> str:
    """What osr-train says at the end: the test numbers in words, where the checkpoint is, what to run next."""
    run = cfg.run_dir
    lines = [f"osr-train: done in {_duration(seconds)} ({cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''})."]
    if "accuracy" in metrics:
        text = (f"  test: {100 * metrics['accuracy']:.1f} % of the {metrics.get('n_known', '?')} known test images "
                "classified correctly")
        if "auroc" in metrics:
            text += (f"; known vs unknown AUROC {metrics['auroc']:.3f} over {metrics.get('n_unknown', '?')} unknown "
                     f"images ({cfg.score} score; 0.5 is chance, 1.0 perfect)")
        else:
            text += "; no unknown test images, so no AUROC (add some under the data root's unknown/ folder)"
        lines.append(text)
    reference = metrics.get("frozen_reference")
    if reference:
        lines.append("  " + reference_line(reference, metrics))
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", os.path.basename(os.path.normpath(run))).strip("-.") or "model"
    lines += [f"  checkpoint: {os.path.join(run, 'checkpoint.pt')} (metrics.json, log.jsonl and curves.png beside it)",
              f"  next: osr-export {shlex.quote(run)} --name {name}   # a calibrated model in exports/{name}/"]
    return "\n".join(lines)


def reference_line(reference: dict, metrics: dict) -> str:
    """The frozen-feature reference in one line, a WARNING when this run is worse."""
    if not reference.get("available"):
        return f"frozen-feature reference not measured: {reference.get('why')}"
    best = reference["probes"][reference["best"]]
    text = (f"frozen {reference['arch']} features at {reference['input_size']} px with no training: accuracy "
            f"{100 * reference['accuracy']:.1f} %, AUROC {best['auroc']:.3f} ({reference['best']})")
    if metrics["auroc"] < best["auroc"]:
        return ("WARNING: this run tells known from unknown worse than " + text + f" (this run: AUROC "
                f"{metrics['auroc']:.3f}); see the README's recipe for your own classes")
    return text + f"; this run is better (AUROC {metrics['auroc']:.3f})"


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = config_from_args(argv)
    except ValueError as e:
        print(f"osr-train: error: {e}", file=sys.stderr)
        return 2
    # torch and the data code only now, after --help and argument errors have been answered
    from .checkpoint import CheckpointError
    from .data import DataError
    from .trainer import NonFiniteLossError, Trainer

    started = time.perf_counter()
    try:
        metrics = Trainer(cfg).fit()
    except (DataError, CheckpointError, NonFiniteLossError, FileNotFoundError, ValueError) as e:
        print(f"osr-train: error: {e}", file=sys.stderr)
        return 1
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone evaluated and speaks
        print(done_summary(cfg, metrics, time.perf_counter() - started), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
