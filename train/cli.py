"""``osr-train``: the command-line entry point of the training module."""

from __future__ import annotations

import sys

from .checkpoint import CheckpointError
from .config import config_from_args
from .data import DataError


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = config_from_args(argv)
    except ValueError as e:
        print(f"osr-train: error: {e}", file=sys.stderr)
        return 2
    from .trainer import NonFiniteLossError, Trainer  # torch import after argument errors are reported

    try:
        metrics = Trainer(cfg).fit()
    except (DataError, CheckpointError, NonFiniteLossError, FileNotFoundError, ValueError) as e:
        print(f"osr-train: error: {e}", file=sys.stderr)
        return 1
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    print(f"osr-train: done: {cfg.run_dir}/checkpoint.pt {metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
