"""osr-serve's entry point: settings precedence, fail-fast checks, a real process that stops on SIGTERM."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from osr.serve.server import load_settings, main
from osr.serve.settings import Settings


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch, tiny_model_repository: Path) -> None:
    monkeypatch.setenv("OSR_MODEL_REPOSITORY", str(tiny_model_repository))
    monkeypatch.setenv("OSR_MAX_FILES", "3")
    monkeypatch.setenv("OSR_PORT", "9001")
    settings = load_settings(["--max-files", "5"])
    assert (settings.max_files, settings.port, settings.model_repository) == (5, 9001, tiny_model_repository)


def test_settings_survive_the_trip_to_worker_processes(monkeypatch, tiny_model_repository: Path, tmp_path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    settings = load_settings(["--model-repository", str(tiny_model_repository), "--max-batch", "8",
                              "--max-wait-ms", "1.5", "--api-key-file", str(key_file), "--model", "tiny"])
    assert settings.api_key.get_secret_value() == "s3cret"
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings


def test_default_repository_is_the_bundled_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import osr.serve

    monkeypatch.delenv("OSR_MODEL_REPOSITORY", raising=False)
    bundled = Path(osr.serve.__file__).resolve().parents[1] / "model_repository"
    if bundled.is_dir():
        assert Settings().model_repository == bundled.resolve()
    else:
        with pytest.raises(ValueError, match="does not exist"):
            Settings()


@pytest.mark.parametrize(("argv", "message"), [
    (["--model-repository", "/nonexistent/models"],
     "osr-serve: invalid settings: model_repository: Value error, model repository /nonexistent/models does not "
     "exist or is not a folder (set OSR_MODEL_REPOSITORY or --model-repository to a folder written by osr-export)"),
    (["--max-files", "0"], "osr-serve: invalid settings: max_files: Input should be greater than or equal to 1"),
])
def test_invalid_settings_exit_2(capsys, monkeypatch, tiny_model_repository: Path, argv, message) -> None:
    monkeypatch.setenv("OSR_MODEL_REPOSITORY", str(tiny_model_repository))
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == message


def test_tampered_model_exits_2_naming_the_hash(capsys, tiny_model_repository: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(tiny_model_repository, repository)
    with open(repository / "tiny" / "1" / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(SystemExit) as info:
        main(["--model-repository", str(repository)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("osr-serve: cannot serve: ") and "sha256" in err


def test_unknown_model_name_exits_2(capsys, tiny_model_repository: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--model-repository", str(tiny_model_repository), "--model", "nope"])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("osr-serve: cannot serve: ")


def test_serving_modules_do_not_import_torch() -> None:
    code = ("import sys, osr.serve.app, osr.serve.server, osr.serve.oip, osr.serve.batcher, osr.serve.metrics; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_real_process_serves_then_stops_on_sigterm(osr_serve_process) -> None:
    process, port = osr_serve_process("--log-level", "info", "--graceful-shutdown-s", "5", timeout_s=60)
    assert httpx.get(f"http://127.0.0.1:{port}/v2/models/tiny").json()["name"] == "tiny"
    process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully; osr-serve turns the signal it re-raises into a clean exit
    assert process.wait(timeout=20) == 0
    log = process.stdout.read()
    assert "Application shutdown complete." in log and "Finished server process" in log, log


def test_onnxruntime_threads_are_shared_out_between_workers(tiny_model_repository, monkeypatch) -> None:
    from osr.serve.app import onnxruntime_threads

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert onnxruntime_threads(Settings(model_repository=tiny_model_repository)) is None  # onnxruntime decides
    assert onnxruntime_threads(Settings(model_repository=tiny_model_repository, workers=2)) == 4
    assert onnxruntime_threads(Settings(model_repository=tiny_model_repository, workers=16)) == 1
    assert onnxruntime_threads(Settings(model_repository=tiny_model_repository, workers=2, threads=3)) == 3
