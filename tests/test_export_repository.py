"""Atomic version folders in the model repository."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from osr.export.repository import (
    VersionExistsError,
    check_version_free,
    next_version,
    version_writer,
    write_model_configs,
)


def _hidden(model_dir: Path) -> list[str]:
    return [p.name for p in model_dir.iterdir() if p.name.startswith(".")]


def test_version_appears_only_when_complete(tmp_path: Path) -> None:
    with version_writer(tmp_path, "m", 1) as staging:
        (staging / "model.onnx").write_bytes(b"x")
        assert not (tmp_path / "m" / "1").exists()
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == b"x"
    assert _hidden(tmp_path / "m") == []
    assert next_version(tmp_path, "m") == 2
    assert next_version(tmp_path, "other") == 1


def test_failure_leaves_nothing_and_keeps_old_version(tmp_path: Path) -> None:
    with version_writer(tmp_path, "m", 1) as staging:
        (staging / "model.onnx").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with version_writer(tmp_path, "m", 1, force=True) as staging:
            (staging / "model.onnx").write_bytes(b"new")
            raise RuntimeError("boom")
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == b"old"
    assert _hidden(tmp_path / "m") == []


def test_existing_version_needs_force(tmp_path: Path) -> None:
    with version_writer(tmp_path, "m", 3) as staging:
        (staging / "a").write_text("old")
    with pytest.raises(VersionExistsError, match="already exists; pass --force"):
        check_version_free(tmp_path, "m", 3)
    with pytest.raises(VersionExistsError):
        with version_writer(tmp_path, "m", 3):
            pytest.fail("must not be entered")
    with version_writer(tmp_path, "m", 3, force=True) as staging:
        (staging / "b").write_text("new")
    assert sorted(p.name for p in (tmp_path / "m" / "3").iterdir()) == ["b"]
    assert _hidden(tmp_path / "m") == []
    with pytest.raises(ValueError, match="positive integers"):
        check_version_free(tmp_path, "m", 0)


def test_model_configs(tmp_path: Path) -> None:
    write_model_configs(tmp_path / "m", "gpu text\n", "cpu text\n")
    assert (tmp_path / "m" / "config.pbtxt").read_text() == "gpu text\n"
    assert (tmp_path / "m" / "configs" / "cpu.pbtxt").read_text() == "cpu text\n"


def _version(repository: Path, name: str, version: int, classes: list[str], size: int = 32) -> None:
    import json

    from osr.export.manifest import input_specs

    with version_writer(repository, name, version) as staging:
        manifest = {"classes": classes, "inputs": input_specs(size)}
        (staging / "manifest.json").write_text(json.dumps(manifest))


def test_a_version_with_other_classes_or_input_needs_force(tmp_path: Path) -> None:
    from osr.export.manifest import input_specs
    from osr.export.repository import IncompatibleModelError, check_compatible

    _version(tmp_path, "m", 1, ["cat", "dog"])
    check_compatible(tmp_path, "m", ["cat", "dog"], input_specs(32), 2)  # same model: fine
    check_compatible(tmp_path, "new", ["x"], input_specs(28), 1)  # no model yet: fine
    with pytest.raises(IncompatibleModelError, match=r"classes \[cat, dog\] \(2\) -> \[0, 1, 2\] \(3\)"):
        check_compatible(tmp_path, "m", ["0", "1", "2"], input_specs(32), 2)
    with pytest.raises(IncompatibleModelError, match=r"classes .*; input shape \[\[-1, 32, 32, 3\]\] -> \[\[-1, 28"):
        check_compatible(tmp_path, "m", ["dog", "cat"], input_specs(28), 2)
    renamed = [dict(input_specs(32)[0], name="pixels")]
    with pytest.raises(IncompatibleModelError, match=r"input name \['images'\] -> \['pixels'\].*--force"):
        check_compatible(tmp_path, "m", ["cat", "dog"], renamed, 2)
    check_compatible(tmp_path, "m", ["0", "1", "2"], input_specs(28), 2, force=True)
    check_compatible(tmp_path, "m", ["0", "1", "2"], input_specs(28), 1)  # replacing the only version


def test_configs_are_kept_when_equal_and_refused_when_they_would_change(tmp_path: Path) -> None:
    from osr.export.repository import ConfigChangedError

    model = tmp_path / "m"
    write_model_configs(model, "# from version 1\nname: \"m\"\nmax_batch_size: 64\n", "kind: CPU\n")
    before = (model / "config.pbtxt").stat().st_mtime_ns
    # Only the comment differs: the file is left as it is.
    write_model_configs(model, "# from version 2\nname: \"m\"\nmax_batch_size: 64\n", "kind: CPU\n")
    assert (model / "config.pbtxt").read_text().startswith("# from version 1")
    assert (model / "config.pbtxt").stat().st_mtime_ns == before
    with pytest.raises(ConfigChangedError, match=r"config.pbtxt exists with other content .*'max_batch_size: 64' -> 'max_batch_size: 8'.*--force"):
        write_model_configs(model, "name: \"m\"\nmax_batch_size: 8\n", "kind: CPU\n")
    with pytest.raises(ConfigChangedError, match=r"configs/cpu.pbtxt exists"):
        write_model_configs(model, "name: \"m\"\nmax_batch_size: 64\n", "kind: GPU\n")
    assert "max_batch_size: 64" in (model / "config.pbtxt").read_text()  # nothing written on refusal
    assert (model / "configs" / "cpu.pbtxt").read_text() == "kind: CPU\n"
    write_model_configs(model, "name: \"m\"\nmax_batch_size: 8\n", "kind: GPU\n", force=True)
    assert (model / "config.pbtxt").read_text() == "name: \"m\"\nmax_batch_size: 8\n"
    assert (model / "configs" / "cpu.pbtxt").read_text() == "kind: GPU\n"


def test_an_export_is_readable_by_other_users_under_the_usual_umask(tiny_model_repository: Path) -> None:
    """A Triton container often runs as another user than the one who exported: every folder and
    file of the repository must carry the umask's read bits (temp files made 0700/0600 once)."""
    umask = os.umask(0)
    os.umask(umask)
    if umask & 0o044:
        pytest.skip(f"umask {umask:03o} withholds read access itself")
    paths = list(tiny_model_repository.rglob("*"))
    assert any(p.name == "manifest.json" for p in paths) and any(p.name == "config.pbtxt" for p in paths)
    for p in paths:
        want = 0o055 if p.is_dir() else 0o044
        assert stat.S_IMODE(p.stat().st_mode) & want == want, f"{p.relative_to(tiny_model_repository)}: {stat.filemode(p.stat().st_mode)}"
