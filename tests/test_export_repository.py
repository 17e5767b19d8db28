"""Atomic version folders in the model repository."""

from __future__ import annotations

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
