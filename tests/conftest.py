"""Shared fixtures. `tiny_model_repository` is a real export (osr-export's own code path) of a
random-weights classifier32 (width 0.125, 3 classes, 32 px) for the serve and Triton tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

TINY_NAME = "tiny"
TINY_CLASSES = ["cat", "dog", "ship"]
TINY_IMAGE_SIZE = 32
TINY_MEAN = [0.49, 0.48, 0.45]
TINY_STD = [0.25, 0.24, 0.26]


def make_tiny_export_inputs(seed: int = 0, n_calib: int = 60, n_test: int = 24):
    """ExportInputs for a random-weights classifier32 and random uint8 images (deterministic)."""
    import torch

    from osr.export.pipeline import ExportInputs
    from osr.train.models import build_model

    torch.manual_seed(seed)
    model = build_model("classifier32", num_classes=len(TINY_CLASSES), width=0.125).eval()
    rng = np.random.default_rng(seed)
    shape = (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)
    calib_x = rng.integers(0, 256, (n_calib, *shape), dtype=np.uint8)
    return ExportInputs(
        model=model,
        classes=list(TINY_CLASSES),
        image_size=TINY_IMAGE_SIZE,
        mean=list(TINY_MEAN),
        std=list(TINY_STD),
        calib_x=calib_x,
        calib_y=rng.integers(0, len(TINY_CLASSES), n_calib),
        test_known_x=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        test_known_y=rng.integers(0, len(TINY_CLASSES), n_test),
        test_unknown_x=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        quantization_x=rng.integers(0, 256, (32, *shape), dtype=np.uint8),
        provenance={"run_id": "tiny-fixture", "method": "random-weights", "student": "classifier32"},
    )


@pytest.fixture(scope="session")
def tiny_export_inputs():
    """Factory for fresh ExportInputs of the tiny model: call it with seed/n_calib/n_test."""
    return make_tiny_export_inputs


@pytest.fixture(scope="session")
def tiny_model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with model "tiny" version 1 (config.pbtxt, configs/cpu.pbtxt when the
    Triton renderer is present, model.onnx, manifest.json, report/)."""
    from osr.export.pipeline import ExportOptions, export_to_repository

    repository = tmp_path_factory.mktemp("model_repository")
    export_to_repository(
        make_tiny_export_inputs(),
        ExportOptions(repository=repository, name=TINY_NAME, version=1, alpha=0.05),
    )
    return repository


@pytest.fixture(scope="session")
def serve_app():
    """Context-manager factory: ``with serve_app(app) as url:`` runs an ASGI app with uvicorn on a
    free 127.0.0.1 port in a thread, waits until /readyz answers 200, yields "http://127.0.0.1:PORT"."""
    import contextlib

    from osr.serve.in_thread import serving

    @contextlib.contextmanager
    def serve(app, timeout_s: float = 30.0):
        with serving(app, timeout_s) as (url, _):
            yield url

    return serve


@pytest.fixture
def never_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """A setup that should have been refused must fail the test, not start serving."""
    import uvicorn

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("osr-serve started serving")

    monkeypatch.setattr(uvicorn, "run", refuse)
    monkeypatch.setattr(uvicorn.Server, "run", refuse)


@pytest.fixture
def osr_serve_process(tiny_model_repository: Path) -> Iterator[Callable[..., tuple[subprocess.Popen, int]]]:
    """start(*flags, timeout_s=90) -> (process, port): a real `python -m osr.serve.server` on the tiny
    repository and a free 127.0.0.1 port, without OSR_* settings from the environment, ready when
    returned (its output is the assertion message if it dies first); killed at teardown if still up."""
    from osr.serve.in_thread import free_port, wait_until_ready

    started: list[subprocess.Popen] = []

    def start(*flags: str, timeout_s: float = 90) -> tuple[subprocess.Popen, int]:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("OSR_")}
        process = subprocess.Popen(
            [sys.executable, "-m", "osr.serve.server", "--model-repository", str(tiny_model_repository),
             "--port", str(port), *flags],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        started.append(process)
        try:
            wait_until_ready(f"http://127.0.0.1:{port}", timeout_s, alive=lambda: process.poll() is None)
        except RuntimeError as exc:
            raise AssertionError(process.stdout.read()) from exc
        return process, port

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()
