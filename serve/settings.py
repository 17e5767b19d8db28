"""osr-serve settings: environment variables with the ``OSR_`` prefix; CLI flags (server.py) override them.

Invalid values fail at construction (pydantic ValidationError) so the server never starts half-configured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from osr.serve.predictor import default_model_repository

MIB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OSR_", env_ignore_empty=True, extra="ignore")

    model_repository: Path = Field(
        default_factory=default_model_repository,
        description="model repository written by osr-export (default: the bundled model_repository/)",
    )
    model: str | None = Field(None, description="model name in the repository (default: the only model, or the "
                              "one named in the repository's DEFAULT_MODEL file)")
    version: int | None = Field(None, ge=1, description="model version (default: the newest)")
    triton_url: str | None = Field(None, description="run inference on this Triton server (host:port) instead of "
                                   "in-process (default: none, onnxruntime in-process)")
    triton_protocol: Literal["http", "grpc"] = Field("http", description="protocol for --triton-url")
    threads: int | None = Field(None, ge=1, description="onnxruntime intra-op threads per worker (default: "
                                "onnxruntime's with one worker, CPUs / workers with several)")

    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8000, ge=0, le=65535, description="port")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes")
    graceful_shutdown_s: float = Field(30.0, ge=0, description="time in-flight requests get after SIGTERM")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field("info", description="uvicorn log level")

    max_body_bytes: int = Field(20 * MIB, ge=1, description="largest request body, multipart or OIP "
                                "(after decompression for OIP)")
    max_json_bytes: int = Field(4 * MIB, ge=1, description="largest JSON part of an OIP inference request "
                                "(binary tensor data is counted by max_body_bytes only)")
    max_pixels: int = Field(40_000_000, ge=1, description="largest decoded image, width x height")
    max_files: int = Field(64, ge=1, description="most files in one /v1/classify request")
    default_top_k: int = Field(5, ge=0, description="top_k of /v1/classify when the query does not say")
    api_key: SecretStr | None = Field(None, description="when set, /v1 and the /v2 model routes need this key "
                                      "(compared as UTF-8 bytes); given but blank refuses to start")
    protect_all: bool = Field(False, description="the API key also guards /metrics, /docs, /redoc, /openapi.json "
                              "and every other route (the demo page too) except the health probes; needs a key")

    header_timeout_s: float = Field(10.0, gt=0, description="a request's line and headers must arrive within this "
                                    "time of its first byte (or of the connection opening): else 408, closed")
    body_timeout_s: float = Field(60.0, gt=0, description="a request's whole body must arrive within this time "
                                  "of its headers: else 408, closed")
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="largest request line plus headers: else 431")

    max_infer_images: int = Field(256, ge=1, description="most images in one /v2 inference request: else 413 "
                                  "(the batcher runs them in chunks of max_batch, taking turns with other requests)")
    request_timeout_s: float = Field(30.0, gt=0, description="a request's decoding and inference must finish within "
                                     "this time of its body arriving: else 503 with Retry-After, the rest dropped")
    decode_memory_bytes: int = Field(768 * MIB, ge=MIB, description="memory the uploads being decoded at once may "
                                     "take, across all requests (estimated from each header before decoding)")
    decode_wait_s: float = Field(10.0, ge=0, description="longest wait of an upload for room in decode_memory_bytes "
                                 "(first come, first served): else 503 with Retry-After")
    decode_threads: int | None = Field(None, ge=1, description="uploads decoded at once (default: min(4, CPUs))")
    monitor_images_per_request: int = Field(16, ge=1, description="most images of one request that enter the drift "
                                            "monitor's window (a random sample), so no request can steer it")

    max_batch: int = Field(32, ge=1, description="dynamic batching: most images in one inference call")
    max_wait_ms: float = Field(10.0, ge=0, description="dynamic batching: longest wait for requests still being "
                               "read or decoded (none is waited for when nothing is arriving); 10 ms measured "
                               "best on the bundled model, docs/performance.md")

    @field_validator("model_repository")
    @classmethod
    def _repository_exists(cls, value: Path) -> Path:
        value = value.expanduser()
        if not value.is_dir():
            raise ValueError(
                f"model repository {value} does not exist or is not a folder "
                "(set OSR_MODEL_REPOSITORY or --model-repository to a folder written by osr-export)"
            )
        return value.resolve()

    @field_validator("triton_url", "model", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _key_is_real(cls, value: object) -> object:
        # A key that is given but blank must not quietly switch authentication off.
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            value = value.strip()  # an HTTP header cannot carry surrounding whitespace anyway
            if not value:
                raise ValueError("the API key is empty or only whitespace; set a key, or unset OSR_API_KEY "
                                 "and drop --api-key-file to serve without one")
            if any(ord(char) < 32 or ord(char) == 127 for char in value):
                raise ValueError("the API key holds control characters, which an HTTP header cannot carry")
        return value

    @model_validator(mode="after")
    def _protect_all_needs_a_key(self) -> Settings:
        if self.protect_all and self.api_key is None:
            raise ValueError("protect_all needs an API key (OSR_API_KEY or --api-key-file)")
        return self

    def to_env(self) -> dict[str, str]:
        """The settings as OSR_* variables, so uvicorn worker processes rebuild exactly these settings."""
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"OSR_{name.upper()}"] = str(value)
        return env
