"""Atomic writes into a Triton-style model repository: <repo>/<name>/<version>/ and model-level configs.

A version folder is assembled in a hidden staging folder next to it and renamed into place only
when complete, so readers (osr-serve, Triton) never see a half-written version. Nothing that
exists is changed without force=True: an existing version is not replaced, a version whose
classes or input differ from the model's newest version is not added, and a model's
config.pbtxt / configs/cpu.pbtxt are not rewritten when their content (comments aside) would
change; identical configs are left untouched.
"""

from __future__ import annotations

import difflib
import json
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from osr.atomic import write_text_atomic
from osr.export.manifest import MANIFEST_FILE, list_versions

GPU_CONFIG = "config.pbtxt"
CPU_CONFIG = Path("configs") / "cpu.pbtxt"


class VersionExistsError(FileExistsError):
    """The version folder exists and force was not given."""


class IncompatibleModelError(ValueError):
    """The model already holds versions with other classes or another input, and force was not given."""


class ConfigChangedError(FileExistsError):
    """A model-level config exists with other content, and force was not given."""


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


def _short(values: list) -> str:
    text = ", ".join(str(value) for value in values[:8])
    return f"[{text}{', ...' if len(values) > 8 else ''}] ({len(values)})"


def _differences(existing: dict, classes: list[str], inputs: list[dict]) -> list[str]:
    found = []
    old_classes = list(existing.get("classes") or [])
    if old_classes != list(classes):
        found.append(f"classes {_short(old_classes)} -> {_short(list(classes))}")
    old_inputs = existing.get("inputs") or []
    old_shapes = [spec.get("shape") for spec in old_inputs]
    new_shapes = [spec.get("shape") for spec in inputs]
    if old_shapes != new_shapes:
        found.append(f"input shape {old_shapes} -> {new_shapes}")
    for key in ("name", "dtype", "layout", "color"):
        old = [spec.get(key) for spec in old_inputs]
        new = [spec.get(key) for spec in inputs]
        if old != new:
            found.append(f"input {key} {old} -> {new}")
    return found


def check_compatible(
    repository: Path, name: str, classes: list[str], inputs: list[dict], version: int, force: bool = False
) -> None:
    """Refuse (without force) to add `version` to a model whose newest other version has other
    classes (names or order) or another input tensor (name, dtype, shape, layout, colour):
    clients of <name> would silently get another model."""
    if force:
        return
    model_dir = Path(repository) / name
    others = [existing for existing in list_versions(model_dir) if existing != version]
    if not others:
        return
    newest = model_dir / str(others[-1])
    try:
        existing = json.loads((newest / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise IncompatibleModelError(
            f"{newest} has no readable {MANIFEST_FILE} ({error}); pass --force to add version {version} "
            "anyway or choose another --name"
        ) from None
    found = _differences(existing, classes, inputs)
    if found:
        raise IncompatibleModelError(
            f"{model_dir} version {others[-1]} differs from this export: {'; '.join(found)}. Pass --force to "
            f"add it as version {version} anyway, or choose another --name"
        )


def _content(text: str) -> list[str]:
    """Config lines that matter: comments and blank lines left out."""
    return [line.rstrip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _config_change(path: Path, text: str) -> str | None:
    """None when `path` is absent or holds the same content; else its first change, "old -> new"."""
    if not path.is_file():
        return None
    old, new = _content(path.read_text(encoding="utf-8")), _content(text)
    if old == new:
        return None
    for tag, old_start, old_end, new_start, new_end in difflib.SequenceMatcher(a=old, b=new).get_opcodes():
        if tag != "equal":
            removed = " ".join(line.strip() for line in old[old_start:old_end]) or "(nothing)"
            added = " ".join(line.strip() for line in new[new_start:new_end]) or "(nothing)"
            return f"{removed[:80]!r} -> {added[:80]!r}"
    return "content differs"


def check_model_configs(model_dir: Path, gpu_config: str, cpu_config: str | None, force: bool = False) -> None:
    """Refuse (without force) when an existing config.pbtxt or configs/cpu.pbtxt would change."""
    if force:
        return
    wanted = [(GPU_CONFIG, gpu_config)] + ([(CPU_CONFIG, cpu_config)] if cpu_config is not None else [])
    for relative, text in wanted:
        change = _config_change(Path(model_dir) / relative, text)
        if change is not None:
            raise ConfigChangedError(
                f"{Path(model_dir) / relative} exists with other content (first change: {change}); "
                "pass --force to rewrite it, or choose another --name"
            )


@contextmanager
def version_writer(repository: Path, name: str, version: int, force: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on success it becomes <repo>/<name>/<version>.

    On an exception the staging folder is removed and any existing version is left untouched.
    """
    check_version_free(repository, name, version, force)
    model_dir = Path(repository) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 would become the version folder's mode, unreadable to a
    # Triton server that runs as another user; mkdir gives the umask's mode.
    staging = model_dir / f".staging-{version}-{secrets.token_hex(4)}"
    staging.mkdir()
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


def write_model_configs(model_dir: Path, gpu_config: str, cpu_config: str | None, force: bool = False) -> None:
    """<model_dir>/config.pbtxt and, if given, <model_dir>/configs/cpu.pbtxt.

    A file whose content (comments aside) is already the same is left untouched; one with other
    content is rewritten only with force (ConfigChangedError otherwise, before anything is written).
    """
    check_model_configs(model_dir, gpu_config, cpu_config, force)
    wanted = [(GPU_CONFIG, gpu_config)] + ([(CPU_CONFIG, cpu_config)] if cpu_config is not None else [])
    for relative, text in wanted:
        path = Path(model_dir) / relative
        if not path.is_file() or _config_change(path, text) is not None:
            write_text_atomic(path, text)
