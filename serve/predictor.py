"""The predictor behind osr-serve and osr-score: manifest checks, preprocessing, one of two backends.

Backends share one interface (``infer(batch) -> {"logits", "score", "label", "p_value"}``):
- OnnxRuntimeBackend: the model.onnx of the version folder, in process (default);
- TritonBackend: a running Triton (or any Open Inference Protocol server such as osr-serve)
  reached with tritonclient over HTTP or gRPC; model name and version come from the manifest.
The manifest is always read from the local repository (classes, image size, threshold), and the
sha256 of model.onnx is checked even with Triton, so the decisions are those of the audited file.
``from_repository`` runs the preflight (preflight.py): a repository that cannot be served
correctly is refused there, with one line, before anything is served or scored.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from osr.export.manifest import INPUT_NAME, OUTPUT_NAMES, ManifestError, ManifestRecord, resolve_version_dir
from osr.images import DEFAULT_MAX_PIXELS, resize_for_model
from osr.inputs import ImageInput, InputLimits, error_message, prepare_input
from osr.serve import preflight
from osr.serve.results import error_row, rows_from_outputs

DEFAULT_MAX_BATCH_SIZE = 64
MODEL_REPOSITORY_ENV = "OSR_MODEL_REPOSITORY"


class PredictorError(RuntimeError):
    """The model cannot be served (bad manifest, graph that breaks the contract, backend unreachable)."""


def default_model_repository() -> Path:
    """$OSR_MODEL_REPOSITORY if set, else the bundled ``model_repository/`` at the repository root.

    The bundled folder is found relative to this file (serve/ -> repo root), which is where it is
    in a checkout and in an editable install.
    """
    configured = os.environ.get(MODEL_REPOSITORY_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(__file__).resolve().parents[1] / "model_repository"


class Backend(Protocol):
    name: str
    max_batch_size: int

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class OnnxRuntimeBackend:
    """In-process onnxruntime session (CPU unless ``providers`` says otherwise)."""

    name = "onnxruntime"

    def __init__(
        self,
        model_path: Path,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    ):
        import onnxruntime as ort  # serving-only dependency, imported where it is needed

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise PredictorError(f"onnxruntime cannot load {model_path}: {preflight.one_line(exc)}") from exc
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != [INPUT_NAME] or not set(OUTPUT_NAMES) <= set(outputs):
            raise PredictorError(
                f"{model_path} breaks the graph contract: inputs {inputs} (want ['{INPUT_NAME}']), "
                f"outputs {outputs} (want {list(OUTPUT_NAMES)})"
            )
        self.max_batch_size = int(max_batch_size)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        return dict(zip(OUTPUT_NAMES, values))

    def close(self) -> None:
        self.session = None


class TritonBackend:
    """A Triton / Open Inference Protocol server, via tritonclient (http or grpc).

    tritonclient's HTTP client is gevent-based and bound to the thread that made it, so every
    thread that calls ``infer`` gets its own client (made on first use); all are closed by close().
    """

    name = "triton"

    def __init__(
        self,
        url: str,
        model_name: str,
        model_version: int | None,
        *,
        protocol: str = "http",
        max_batch_size: int | None = None,
        timeout_s: float = 60.0,
    ):
        if protocol not in ("http", "grpc"):
            raise ValueError(f"triton protocol must be 'http' or 'grpc', got {protocol!r}")
        try:
            if protocol == "http":
                import tritonclient.http as client_module
            else:
                import tritonclient.grpc as client_module
        except ImportError as exc:
            raise PredictorError(
                f"the Triton backend needs tritonclient[{protocol}] (pip install 'osr[serve]'): {exc}"
            ) from exc
        self._client_module = client_module
        self.protocol = protocol
        self.url = url
        self.model_name = model_name
        self.model_version = "" if model_version is None else str(model_version)
        self._host, self._ssl = _split_url(url, protocol)
        self._timeout_s = timeout_s
        self._local = threading.local()
        self._clients: list = []
        self._clients_lock = threading.Lock()
        try:
            ready = self._client().is_model_ready(model_name, self.model_version)
        except Exception as exc:  # tritonclient raises InferenceServerException and socket errors
            self.close()
            raise PredictorError(f"cannot reach the Triton server at {url} ({protocol}): {exc}") from exc
        if not ready:
            self.close()
            version_text = self.model_version or "default"
            raise PredictorError(f"model {model_name!r} version {version_text} is not ready on {url}")
        self.max_batch_size = int(max_batch_size or self._server_max_batch_size() or DEFAULT_MAX_BATCH_SIZE)

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "http":
                client = self._client_module.InferenceServerClient(
                    self._host, ssl=self._ssl, connection_timeout=self._timeout_s, network_timeout=self._timeout_s
                )
            else:
                client = self._client_module.InferenceServerClient(self._host, ssl=self._ssl)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _server_max_batch_size(self) -> int | None:
        try:
            config = self._client().get_model_config(self.model_name, self.model_version)
        except Exception:  # servers without the model-configuration extension answer with an error
            return None
        if self.protocol == "grpc":
            value = config.config.max_batch_size
        else:
            value = config.get("max_batch_size")
        return int(value) if value else None

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        cm = self._client_module
        request_input = cm.InferInput(INPUT_NAME, list(batch.shape), "UINT8")
        request_input.set_data_from_numpy(np.ascontiguousarray(batch))
        requested = [cm.InferRequestedOutput(name) for name in OUTPUT_NAMES]
        result = self._client().infer(
            self.model_name, inputs=[request_input], outputs=requested, model_version=self.model_version
        )
        outputs = {name: result.as_numpy(name) for name in OUTPUT_NAMES}
        # Triton presents the per-image outputs (score, label, p_value) with their config dims [1]
        # (the config reshapes [] to [1]): [N, 1] on the wire; the contract is [N].
        return {name: value.reshape(len(batch)) if name != "logits" and value.size == len(batch) else value
                for name, value in outputs.items()}

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # a gevent client closed from another thread may complain; it is gone anyway
                pass
        self._local = threading.local()


def _split_url(url: str, protocol: str) -> tuple[str, bool]:
    """tritonclient wants host:port; accept http://, https://, grpc:// prefixes as users type them."""
    for prefix, ssl in (("https://", True), ("grpcs://", True), ("http://", False), ("grpc://", False)):
        if url.startswith(prefix):
            return url[len(prefix):].rstrip("/"), ssl
    return url.rstrip("/"), False


class Predictor:
    """Decode -> resize -> backend -> result rows, for one manifest.

    Attributes: ``record`` (ManifestRecord: the manifest, parsed once), ``manifest`` (dict, the
    JSON it came from), ``classes`` (list[str]), ``image_size`` (int), ``name`` (str),
    ``version`` (int), ``threshold`` (float), ``version_dir`` (Path | None), ``backend`` (Backend),
    ``max_pixels`` (int), ``limits`` (InputLimits, from max_pixels), ``max_batch_size`` (int).
    Thread safety: ``run`` may be called from several threads (onnxruntime sessions are thread-safe;
    the Triton backend keeps one client per thread).
    """

    def __init__(
        self,
        manifest: ManifestRecord | dict,
        backend: Backend,
        *,
        version_dir: Path | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_batch_size: int | None = None,
    ):
        record = ManifestRecord.from_manifest(manifest)  # a record from from_repository is taken as is
        self.record = record
        self.manifest = record.raw
        self.backend = backend
        self.version_dir = version_dir
        self.classes: list[str] = list(record.classes)
        self.image_size: int = record.image_size
        self.name: str = record.name
        self.version: int = record.version
        self.threshold: float = record.threshold.value
        self.resize_rule: str = record.resize_rule
        self.max_pixels = int(max_pixels)
        self.limits = InputLimits(self.max_pixels)
        self.max_batch_size = int(max_batch_size or backend.max_batch_size)

    @classmethod
    def from_repository(
        cls,
        repository: Path | str | None = None,
        model: str | None = None,
        version: int | None = None,
        *,
        triton_url: str | None = None,
        triton_protocol: str = "http",
        threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_batch_size: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> Predictor:
        """Load ``<repository>/<model>/<version>`` (None: the only model / the newest version).

        repository None -> default_model_repository(). Raises ManifestError (from
        osr.export.manifest) for a missing/bad manifest or hash, PredictorError for a graph or
        backend problem; both messages say what is wrong.
        """
        repository = Path(repository) if repository is not None else default_model_repository()
        if not repository.is_dir():
            raise ManifestError(f"model repository {repository} does not exist or is not a folder")
        version_dir = resolve_version_dir(repository, model, version)
        preflight.check_model_file_name(version_dir)  # before the file is hashed
        record = preflight.load(version_dir)  # the one check of the manifest's fields
        model_path = version_dir / record.model_file
        if not triton_url or model_path.suffix == ".onnx":  # a TensorRT plan is Triton's to check
            preflight.check_graph(model_path, record)
        if triton_url:
            backend: Backend = TritonBackend(
                triton_url, record.name, record.version, protocol=triton_protocol,
                max_batch_size=max_batch_size,
            )
        else:
            backend = OnnxRuntimeBackend(
                model_path, threads=threads, providers=providers,
                max_batch_size=max_batch_size or DEFAULT_MAX_BATCH_SIZE,
            )
        predictor = cls(record, backend, version_dir=version_dir, max_pixels=max_pixels,
                        max_batch_size=max_batch_size)
        try:
            predictor.check_test_batch()
        except BaseException:
            predictor.close()
            raise
        return predictor

    # -- inference -------------------------------------------------------------------------------

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Raw graph outputs for a uint8 [N, S, S, 3] batch (split into max_batch_size chunks)."""
        batch = np.asarray(batch)
        expected = (self.image_size, self.image_size, 3)
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != expected:
            raise ValueError(f"expected a uint8 batch [N, {self.image_size}, {self.image_size}, 3], "
                             f"got {batch.dtype} {list(batch.shape)}")
        if batch.shape[0] == 0:
            return _empty_outputs(len(self.classes))
        chunks = [
            self.backend.infer(np.ascontiguousarray(batch[start:start + self.max_batch_size]))
            for start in range(0, batch.shape[0], self.max_batch_size)
        ]
        return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in OUTPUT_NAMES}

    def preprocess(self, image: np.ndarray | object) -> np.ndarray:
        """One decoded image (HxWx3 uint8 RGB array or PIL image) -> [S, S, 3] uint8 as the model wants."""
        return resize_for_model(image, self.image_size, self.resize_rule)

    def prepare(self, item: ImageInput) -> np.ndarray:
        """Any input (path, encoded bytes, PIL image, array) through osr.inputs, the one input path
        with this predictor's limits, to [S, S, 3] uint8. TypeError / DecodeError."""
        return prepare_input(item, self.image_size, self.limits)

    def predict_images(self, images: Sequence[np.ndarray], names: Sequence[str], top_k: int = 5) -> list[dict]:
        """Result rows for decoded images of any size (resized here), in input order."""
        if len(images) != len(names):
            raise ValueError(f"{len(images)} images but {len(names)} names")
        if not images:
            return []
        batch = np.stack([self.preprocess(image) for image in images])
        return self.predict_batch(batch, names, top_k)

    def predict_batch(self, batch: np.ndarray, names: Sequence[str], top_k: int = 5) -> list[dict]:
        """Result rows for an already resized uint8 [N, S, S, 3] batch."""
        return rows_from_outputs(self.run(batch), list(names), self.classes, top_k)

    def classify_bytes(self, items: Iterable[tuple[str, bytes]], top_k: int = 5) -> list[dict]:
        """Encoded files -> rows in input order; a file that does not decode becomes an error row."""
        entries: list[tuple[str, np.ndarray | dict]] = []
        for name, data in items:
            try:
                entries.append((name, self.prepare(data)))
            except TypeError:  # not bytes at all: the caller's mistake
                raise
            except Exception as exc:  # one odd file must not stop the others
                entries.append((name, error_row(name, error_message(exc))))
        return self.complete_rows(entries, top_k)

    def complete_rows(self, entries: Sequence[tuple[str, np.ndarray | dict]], top_k: int = 5) -> list[dict]:
        """Rows in input order for a mix of prepared [S, S, 3] images and ready-made (error) rows;
        the images run as one batch."""
        rows: list[dict | None] = [entry if isinstance(entry, dict) else None for _, entry in entries]
        todo = [i for i, row in enumerate(rows) if row is None]
        if todo:
            batch = np.stack([entries[i][1] for i in todo])
            for i, row in zip(todo, self.predict_batch(batch, [entries[i][0] for i in todo], top_k)):
                rows[i] = row
        return rows  # type: ignore[return-value]

    def check_test_batch(self) -> None:
        """Preflight's last step: two black images (one if the backend takes no more) through the
        backend give outputs of the contract's shapes. Raises PredictorError / ManifestError."""
        count = min(2, self.max_batch_size)
        batch = np.zeros((count, self.image_size, self.image_size, 3), dtype=np.uint8)
        try:
            outputs = self.backend.infer(batch)
        except Exception as exc:  # onnxruntime and tritonclient raise their own types
            raise PredictorError(f"{self.name} version {self.version} fails on a test batch of {count} images: "
                                 f"{preflight.one_line(exc)}") from exc
        preflight.check_outputs(outputs, count, len(self.classes), f"{self.name} version {self.version}")

    def warmup(self) -> None:
        """One inference on a black batch so the first request does not pay for lazy initialisation."""
        self.run(np.zeros((1, self.image_size, self.image_size, 3), dtype=np.uint8))

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _empty_outputs(num_classes: int) -> dict[str, np.ndarray]:
    return {
        "logits": np.zeros((0, num_classes), np.float32), "score": np.zeros(0, np.float32),
        "label": np.zeros(0, np.int64), "p_value": np.zeros(0, np.float32),
    }

