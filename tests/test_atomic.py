"""osr.atomic: the one way files are replaced (checkpoints, metrics.json, manifests, configs, CLI outputs)."""

import os
import stat
from pathlib import Path

import pytest

from osr.atomic import atomic_path, write_text_atomic


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_gets_the_umask_permissions_not_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "sub" / "config.pbtxt", "name: \"m\"\n")
    finally:
        os.umask(old)
    assert (tmp_path / "sub" / "config.pbtxt").read_text() == "name: \"m\"\n"
    assert mode(tmp_path / "sub" / "config.pbtxt") == 0o644  # readable by a Triton server running as another user


def test_a_replaced_file_keeps_its_permissions(tmp_path: Path) -> None:
    target = tmp_path / "scores.csv"
    target.write_text("old")
    target.chmod(0o640)
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and mode(target) == 0o640


def test_an_error_inside_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("{\"epoch\": 1}")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_path(target) as temp:
            temp.write_text("{\"ep")  # half written
            raise RuntimeError("crash")
    assert target.read_text() == "{\"epoch\": 1}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_the_temporary_lives_beside_the_target(tmp_path: Path) -> None:
    """Same folder, so the final rename is atomic (one filesystem) and never crosses devices."""
    with atomic_path(tmp_path / "checkpoint.pt") as temp:
        assert temp.parent == tmp_path and temp.name.startswith(".checkpoint.pt.")
        temp.write_bytes(b"x")
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"x"
