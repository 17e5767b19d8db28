"""osr.export.manifest: round trip, refusals with messages that say which check failed, version resolution."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from osr.export.manifest import (
    SCHEMA_VERSION,
    ManifestError,
    load_manifest,
    resolve_version_dir,
    sha256_file,
    write_manifest,
)


def _write_version(repository: Path, name: str, version: int, payload: bytes = b"onnx bytes", **extra) -> Path:
    version_dir = repository / name / str(version)
    version_dir.mkdir(parents=True)
    (version_dir / "model.onnx").write_bytes(payload)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "version": version,
        "model_file": "model.onnx",
        "sha256": sha256_file(version_dir / "model.onnx"),
        "classes": ["a", "b"],
        "image_size": 32,
        "resize": {"rule": "shorter_side_center_crop", "interpolation": "bilinear"},
        "inputs": [{"name": "images", "dtype": "uint8", "shape": [-1, 32, 32, 3]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 2]}],
        "score_function": "max_logit",
        "threshold": {"value": 1.5, "target_false_rejection": 0.05, "method": "split_conformal"},
        "metrics": {"auroc": float("nan"), "accuracy": 0.5},
        **extra,
    }
    write_manifest(version_dir, manifest)
    return version_dir


def test_round_trip_keeps_fields_and_maps_nan_to_null(tmp_path: Path) -> None:
    version_dir = _write_version(tmp_path, "m", 1)
    manifest = load_manifest(version_dir)
    assert manifest["threshold"]["value"] == 1.5
    assert manifest["classes"] == ["a", "b"]
    assert manifest["metrics"] == {"auroc": None, "accuracy": 0.5}
    assert not list(version_dir.glob("*.tmp"))


def test_sha256_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 3_000_000)
    assert sha256_file(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


def test_refuses_changed_model_file_naming_the_hash(tmp_path: Path) -> None:
    version_dir = _write_version(tmp_path, "m", 1)
    (version_dir / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ManifestError, match="sha256 mismatch for model.onnx"):
        load_manifest(version_dir)


def test_refuses_other_schema_version_naming_it(tmp_path: Path) -> None:
    version_dir = _write_version(tmp_path, "m", 1)
    data = json.loads((version_dir / "manifest.json").read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    (version_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=f"schema_version is {SCHEMA_VERSION + 1}"):
        load_manifest(version_dir)


def test_refuses_missing_field_and_missing_files(tmp_path: Path) -> None:
    version_dir = _write_version(tmp_path, "m", 1)
    data = json.loads((version_dir / "manifest.json").read_text())
    del data["threshold"]
    (version_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="missing field.*threshold"):
        load_manifest(version_dir)
    (version_dir / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(version_dir)
    (version_dir / "manifest.json").unlink()
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest(version_dir)


def test_resolve_newest_version_and_named_version(tmp_path: Path) -> None:
    for version in (1, 2, 10):
        _write_version(tmp_path, "m", version)
    (tmp_path / "m" / "configs").mkdir()
    (tmp_path / "m" / ".tmp-3").mkdir()
    assert resolve_version_dir(tmp_path, None, None) == tmp_path / "m" / "10"
    assert resolve_version_dir(tmp_path, "m", 2) == tmp_path / "m" / "2"
    with pytest.raises(ManifestError, match="no version 3.*1, 2, 10"):
        resolve_version_dir(tmp_path, "m", 3)


def test_resolve_name_rules(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="holds no model"):
        resolve_version_dir(tmp_path, None, None)
    _write_version(tmp_path, "tiny", 1)
    _write_version(tmp_path, "tiny-int8", 1, variant_of="tiny")
    assert resolve_version_dir(tmp_path, None, None) == tmp_path / "tiny" / "1"
    assert resolve_version_dir(tmp_path, "tiny-int8", None) == tmp_path / "tiny-int8" / "1"
    _write_version(tmp_path, "other", 1)
    with pytest.raises(ManifestError, match="several models \\(other, tiny, tiny-int8\\)"):
        resolve_version_dir(tmp_path, None, None)
    with pytest.raises(ManifestError, match="no model 'nope'.*other, tiny"):
        resolve_version_dir(tmp_path, "nope", None)
    (tmp_path / "DEFAULT_MODEL").write_text("other\n")
    assert resolve_version_dir(tmp_path, None, None) == tmp_path / "other" / "1"
    assert resolve_version_dir(tmp_path, "tiny", None) == tmp_path / "tiny" / "1"  # a name still wins
    (tmp_path / "DEFAULT_MODEL").write_text("gone")
    with pytest.raises(ManifestError, match="DEFAULT_MODEL names 'gone', which is not a model there"):
        resolve_version_dir(tmp_path, None, None)
    with pytest.raises(ManifestError, match="does not exist"):
        resolve_version_dir(tmp_path / "absent", None, None)


def test_manifest_module_is_stdlib_only() -> None:
    code = (
        "import sys; import osr.export.manifest; "
        "bad = [m for m in ('torch', 'numpy', 'onnx', 'onnxruntime') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
