"""Checkpoints as plain data (``torch.load(weights_only=True)``), written atomically."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch
from torch import nn

from osr.atomic import atomic_path
from .models import build_model

SCHEMA = "osr.checkpoint/1"
REQUIRED = ("schema", "model", "model_args", "classes", "image_size", "normalize", "config",
            "metrics", "calibration_indices", "epoch")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the field."""


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """torch.save through ``osr.atomic``: a crash leaves the old file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a loadable checkpoint: {e}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(ckpt).__name__}")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: missing field(s) {', '.join(missing)}")
    if ckpt["schema"] != SCHEMA:
        raise CheckpointError(f"{path}: schema {ckpt['schema']!r} is not the supported {SCHEMA!r}")
    for k in ("arch", "num_classes", "width"):
        if k not in ckpt["model_args"]:
            raise CheckpointError(f"{path}: model_args lacks {k!r}")
    ckpt["path"] = str(path)
    return ckpt


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild the network from the checkpoint's constructor args and load its weights (eval mode)."""
    model = build_model(**ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
