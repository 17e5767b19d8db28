"""``osr-serve``: run the HTTP service with uvicorn.

Flags override the OSR_* environment (see settings.py). Before uvicorn listens, the settings are
checked and the model is loaded as it will be served (Predictor.from_repository: the preflight of
preflight.py and a test batch): a bad setup exits with status 2 and one line that says what is
wrong, never a server that is up but not (or wrongly) ready. With one worker the loaded model is
the one served; worker processes rebuild the same settings from the OSR_* variables that this
process exports and load their own. On SIGTERM uvicorn stops accepting connections and lets
in-flight requests finish (up to --graceful-shutdown-s; requests still running then get 503),
queued batches are run before the batcher stops, and the process exits with status 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from osr.export.manifest import ManifestError
from osr.serve.metrics import MULTIPROC_ENV
from osr.serve.predictor import Predictor, PredictorError
from osr.serve.settings import Settings

APP_FACTORY = "osr.serve.app:create_app_from_env"
PROTOCOL = "osr.serve.http_protocol:GuardedHttpToolsProtocol"  # header deadline and size cap
API_KEY_ENV = "OSR_API_KEY"


# How a default reads in --help where its value alone says little.
_SHOWN_DEFAULTS = {"max_body_bytes": "20 MiB", "max_json_bytes": "4 MiB", "max_header_bytes": "64 KiB",
                   "decode_memory_bytes": "768 MiB"}


def build_parser() -> argparse.ArgumentParser:
    """One flag per Settings field (its description and default are the help), so the CLI, the
    OSR_* environment and the validation cannot drift apart; the API key comes from a file."""
    parser = argparse.ArgumentParser(
        prog="osr-serve",
        description="Serve an exported osr model over HTTP: /v1/classify, Open Inference Protocol v2 (/v2), "
                    "/healthz, /readyz, /metrics, /docs. Every flag can also be set as an OSR_<NAME> "
                    "environment variable (e.g. OSR_MODEL_REPOSITORY, OSR_API_KEY).",
    )
    add = parser.add_argument
    for name, field in Settings.model_fields.items():
        if name == "api_key":  # never on the command line (ps shows it): --api-key-file below
            continue
        flag, text = "--" + name.replace("_", "-"), field.description or name.replace("_", " ")
        optional = typing.get_origin(field.annotation) in (typing.Union, types.UnionType)
        kind = typing.get_args(field.annotation)[0] if optional else field.annotation
        if "default" not in text and kind is not bool:
            text += f" (default {_SHOWN_DEFAULTS.get(name, field.default)})"
        if kind is bool:
            add(flag, action="store_true", default=None, help=text)
        elif typing.get_origin(kind) is typing.Literal:
            add(flag, choices=typing.get_args(kind), help=text)
        else:
            add(flag, type=kind, help=text)
    add("--api-key-file", type=Path,
        help="file holding the API key (or set OSR_API_KEY; a key on the command line would show in ps); "
             "default: none, no key needed; an empty file refuses to start")
    return parser


class KeyFileError(ValueError):
    """The --api-key-file cannot be read as UTF-8 text."""


def read_key_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"cannot read the API key file {path}: it is not UTF-8 text") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read the API key file {path}: {exc.strerror or exc}") from None


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    """Environment first, then the flags that were given. Raises ValidationError / KeyFileError."""
    args = vars(build_parser().parse_args(argv))
    key_file = args.pop("api_key_file")
    overrides = {name: value for name, value in args.items() if value is not None}
    if key_file is not None:
        overrides["api_key"] = read_key_file(key_file)
    elif os.environ.get(API_KEY_ENV) == "":
        overrides["api_key"] = ""  # set but empty is refused like a blank key, never read as "no key"
    return Settings(**overrides)


def load_checked_model(settings: Settings) -> Predictor:
    """Load the model exactly as serving will (Predictor.from_repository runs the preflight checks
    and a test batch). Raises ManifestError / PredictorError with a one-line message."""
    from osr.serve.app import default_predictor_factory

    return default_predictor_factory(settings)()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's settings for osr-serve: the header deadline and cap (http_protocol.py; h11's own
    cap when httptools is missing), the grace period after SIGTERM."""
    return {
        "host": settings.host, "port": settings.port, "log_level": settings.log_level,
        "timeout_graceful_shutdown": settings.graceful_shutdown_s,
        "http": PROTOCOL if importlib.util.find_spec("httptools") else "h11",
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = load_settings(argv)
        predictor = load_checked_model(settings)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        _fail(f"invalid settings: {problems}")
    except KeyFileError as exc:
        _fail(str(exc))
    except (ManifestError, PredictorError, OSError) as exc:
        _fail(f"cannot serve: {exc}")
    description = f"{predictor.name} version {predictor.version} ({predictor.version_dir})"

    import uvicorn  # after the checks, so a bad setup fails fast and cheaply

    os.environ.update(settings.to_env())  # worker processes (and the protocol's limits) rebuild these settings
    metrics_dir = None
    if settings.workers == 1:
        from osr.serve.app import create_app

        # the predictor the preflight loaded is the one served: what was checked is what runs
        target: Any = create_app(settings, predictor_factory=lambda: predictor)
        extra: dict[str, Any] = {}
    else:
        predictor.close()  # each worker process loads its own
        target, extra = APP_FACTORY, {"factory": True, "workers": settings.workers}
        if not os.environ.get(MULTIPROC_ENV):
            # several processes: prometheus-client's multiprocess mode, one fresh folder per run
            metrics_dir = tempfile.mkdtemp(prefix="osr-serve-metrics-")
            os.environ[MULTIPROC_ENV] = metrics_dir
    _check_port(settings.host, settings.port)
    print(f"osr-serve: serving {description} on http://{settings.host}:{settings.port}", file=sys.stderr)
    # uvicorn finishes a graceful shutdown and then re-raises SIGTERM to the handler it found:
    # make that an exit with status 0, the status of a clean stop
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        uvicorn.run(target, **uvicorn_options(settings), **extra)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _check_port(host: str, port: int) -> None:
    """Fail with one line before saying "serving" when the address cannot be bound (a busy port)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}; stop what holds the port or pick another --port")


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _describe(error: dict) -> str:
    where = ".".join(map(str, error["loc"]))
    return f"{where}: {error['msg']}" if where else error["msg"]


def _fail(message: str) -> None:
    print(f"osr-serve: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
