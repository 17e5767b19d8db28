"""Atomic writes into a Triton-style model repository: <repo>/<name>/<version>/ and model-level configs.

A version folder is assembled in a hidden staging folder next to it and renamed into place only
when complete, so readers (osr-serve, Triton) never see a half-written version. An existing
version is replaced only with force=True.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from osr.export.manifest import list_versions

GPU_CONFIG = "config.pbtxt"
CPU_CONFIG = Path("configs") / "cpu.pbtxt"


class VersionExistsError(FileExistsError):
    """The version folder exists and force was not given."""


def next_version(repository: Path, name: str) -> int:
    """One more than the newest version of `name`, or 1."""
    versions = list_versions(Path(repository) / name)
    return versions[-1] + 1 if versions else 1


def check_version_free(repository: Path, name: str, version: int, force: bool = False) -> None:
    """Fail before any work when <repo>/<name>/<version> exists and force is off."""
    if version < 1:
        raise ValueError(f"versions are positive integers, got {version}")
    target = Path(repository) / name / str(version)
    if target.exists() and not force:
        raise VersionExistsError(f"{target} already exists; pass --force to replace it or choose another --version")


@contextmanager
def version_writer(repository: Path, name: str, version: int, force: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on success it becomes <repo>/<name>/<version>.

    On an exception the staging folder is removed and any existing version is left untouched.
    """
    check_version_free(repository, name, version, force)
    model_dir = Path(repository) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=f".staging-{version}-"))
    try:
        yield staging
        _move_into_place(staging, model_dir / str(version), force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _move_into_place(staging: Path, target: Path, force: bool) -> None:
    if not target.exists():
        os.rename(staging, target)
        return
    check_version_free(target.parent.parent, target.parent.name, int(target.name), force)
    # Two renames (no directory swap primitive): the old version is moved aside first, so the
    # target is briefly absent but never half-written; the old one is deleted afterwards.
    retired = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".retired-{target.name}-"))
    os.rename(target, retired / target.name)
    os.rename(staging, target)
    shutil.rmtree(retired, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file via a temp file in the same folder and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_model_configs(model_dir: Path, gpu_config: str, cpu_config: str | None) -> None:
    """<model_dir>/config.pbtxt and, if given, <model_dir>/configs/cpu.pbtxt."""
    write_text_atomic(Path(model_dir) / GPU_CONFIG, gpu_config)
    if cpu_config is not None:
        write_text_atomic(Path(model_dir) / CPU_CONFIG, cpu_config)
