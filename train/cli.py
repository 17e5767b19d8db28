"""``osr-train``: the command-line entry point of the training module.

Only the config (stdlib and ``osr.train.choices``) is imported before the arguments are parsed,
so ``--help`` and argument errors answer without importing torch.
"""

from __future__ import annotations

import sys

from .config import config_from_args


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
