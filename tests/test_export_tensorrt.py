"""TensorRT probe messages and the CLI's fail-fast; the engine build itself needs TensorRT + a GPU."""

from __future__ import annotations

import builtins
import sys
import types
from pathlib import Path

import pytest

from osr.export import cli, tensorrt


def _hide_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "tensorrt" or name.startswith("tensorrt."):
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)


def test_probe_names_the_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_tensorrt(monkeypatch)
    message = tensorrt.probe_tensorrt()
    assert message is not None and "`tensorrt` Python package is not installed" in message


def test_probe_names_the_missing_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = tensorrt.probe_tensorrt()
    assert message is not None and "no CUDA GPU" in message
    with pytest.raises(tensorrt.TensorRTUnavailable, match="TensorRT export is not possible here: no CUDA GPU"):
        tensorrt.require_tensorrt()


def test_cli_fails_before_any_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _hide_tensorrt(monkeypatch)
    loaded = []
    monkeypatch.setattr("osr.train.checkpoint.load_checkpoint", lambda path: loaded.append(path))
    with pytest.raises(SystemExit, match="TensorRT export is not possible here: the `tensorrt` Python package"):
        cli.main(["does-not-exist.pt", "--tensorrt", "--repository", str(tmp_path / "repo")])
    assert loaded == [] and not (tmp_path / "repo").exists()


@pytest.mark.skipif(tensorrt.probe_tensorrt() is not None, reason="TensorRT or a CUDA GPU is not available")
def test_engine_matches_onnxruntime(tmp_path: Path, tiny_export_inputs) -> None:
    from osr.export.manifest import load_manifest
    from osr.export.pipeline import ExportOptions, export_to_repository

    export_to_repository(
        tiny_export_inputs(), ExportOptions(repository=tmp_path, name="tiny", version=1, tensorrt=True)
    )
    manifest = load_manifest(tmp_path / "tiny-trt" / "1")
    assert manifest["variant"] == "tensorrt_plan" and manifest["parity"]["passed"]
    assert (tmp_path / "tiny-trt" / "config.pbtxt").read_text().count('platform: "tensorrt_plan"') == 1
