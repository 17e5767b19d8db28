"""The Python API: load a model repository, classify paths, bytes, PIL images or numpy arrays.

    from osr.serve import load_model

    with load_model("model_repository") as model:           # the only model there, newest version
        rows = model.classify(["samples/airplane.jpg", pil_image, array, jpeg_bytes])
        print(model.card["classes"], rows[0]["class_name"], rows[0]["p_value"])

Each row is the row osr-score writes and /v1/classify returns (serve/results.py): path, status,
error, class_index (-1 = unknown), class_name ("unknown"), score, p_value, unknown, top_k. An input
that is no usable image becomes a row with status "error"; it does not fail the others. Inputs go
through the one input path of the CLI and the service (osr/inputs.py: the same limits, checked
before any copy; osr/images.py: EXIF orientation, transparency on white, 16-bit scaled to 8), so
the same file gives the same row, or the same error, everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from osr.images import DEFAULT_MAX_PIXELS
from osr.inputs import INPUT_TYPES, ImageInput, error_message, input_type_error
from osr.serve.card import model_card
from osr.serve.monitor import Summary, summarize_rows
from osr.serve.predictor import Predictor
from osr.serve.results import error_row

CHUNK = 256  # images decoded and held at once


class Model:
    """A loaded model. ``classify`` is thread-safe; ``close()`` (or ``with``) releases the backend."""

    def __init__(self, predictor: Predictor, top_k: int = 5) -> None:
        self.predictor = predictor
        self.top_k = _top_k(top_k)

    # -- what the model is ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.predictor.name

    @property
    def version(self) -> int:
        return self.predictor.version

    @property
    def classes(self) -> list[str]:
        return list(self.predictor.classes)

    @property
    def card(self) -> dict[str, Any]:
        """Classes, alpha, test AUROC and false-rejection rate, ... (the same as GET /v1/model)."""
        return model_card(self.predictor.record)

    # -- classification ------------------------------------------------------------------------------

    def classify(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        names: Sequence[str] | None = None,
        top_k: int | None = None,
    ) -> list[dict]:
        """One row per image, in input order.

        ``images``: one input or an iterable of them (a list, a generator; not a dict or a set); a
        4-D uint8 array is a batch of images. Each input is a file path (str or os.PathLike),
        encoded bytes (the accepted formats, osr.images.ACCEPTED_FORMATS), a PIL image, or an
        HxW / HxWx3 / HxWx4 array (uint8, or 16-bit grey; RGB order). ``names`` sets the rows'
        ``path`` (default: the path as given, a PIL image's filename, else ``bytes[i]`` /
        ``image[i]`` / ``array[i]``).

        Every input meets the limits of osr-serve and osr-score (osr/inputs.py: format allowlist,
        JPEG scans, pixels before any copy, file size before reading); one that does not is an
        error row. TypeError for anything that is not an input (``None``, a dict, a number),
        ValueError for ``names`` of another length or a negative ``top_k``.
        """
        items = _as_items(images)
        if names is not None:
            if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
                raise TypeError(f"names must be a sequence of strings, one per image, got {type(names).__name__}")
            if len(names) != len(items):
                raise ValueError(f"{len(items)} images but {len(names)} names")
            if not all(isinstance(name, str) for name in names):
                raise TypeError("names must be strings")
        k = self.top_k if top_k is None else _top_k(top_k)
        rows: list[dict] = []
        for start in range(0, len(items), CHUNK):
            chunk = items[start:start + CHUNK]
            entries = []
            for offset, item in enumerate(chunk):
                index = start + offset
                name = names[index] if names is not None else _default_name(item, index)
                entries.append((name, self._prepare(item, name)))
            rows.extend(self.predictor.complete_rows(entries, k))
        return rows

    def summarize(self, rows: Iterable[Mapping]) -> Summary:
        """The unknown-flag monitor's test of these rows (serve/monitor.py): the unknown rate against
        its band for known-class traffic, and the uniformity of the accepted images' p-values."""
        return summarize_rows(rows, self.predictor.record.threshold)

    def _prepare(self, item: ImageInput, name: str) -> np.ndarray | dict:
        """The model-sized image (osr.inputs, the path the CLI and the service take), or an error row."""
        try:
            return self.predictor.prepare(item)
        except TypeError:  # checked in _as_items; never an error row
            raise
        except Exception as exc:  # one odd image must not stop the others (as in osr-score)
            return error_row(name, error_message(exc))

    # -- lifetime ------------------------------------------------------------------------------------

    def close(self) -> None:
        self.predictor.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Model({self.name!r}, version={self.version}, classes={self.classes})"


def load_model(
    repository: str | os.PathLike | None = None,
    model: str | None = None,
    version: int | None = None,
    *,
    top_k: int = 5,
    triton_url: str | None = None,
    triton_protocol: str = "http",
    threads: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Model:
    """Load ``<repository>/<model>/<version>`` (defaults: $OSR_MODEL_REPOSITORY or the bundled
    model_repository/, its only model, the newest version). Checks the manifest and the model's
    sha256 like osr-serve; ``triton_url`` runs inference on a Triton server instead of in-process.
    Raises osr.export.manifest.ManifestError or osr.serve.predictor.PredictorError, with the reason.
    """
    predictor = Predictor.from_repository(
        Path(repository) if repository is not None else None, model, version,
        triton_url=triton_url, triton_protocol=triton_protocol, threads=threads, max_pixels=max_pixels,
    )
    return Model(predictor, top_k=top_k)


def _as_items(images: object) -> list:
    """One input, or an iterable of inputs (a 4-D array: a batch), as a list; TypeError otherwise."""
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        return [images]
    if isinstance(images, INPUT_TYPES):
        return [images]
    if images is None or isinstance(images, (Mapping, set, frozenset)) or not isinstance(images, Iterable):
        kind = "None" if images is None else f"a {type(images).__name__}"
        raise TypeError(f"classify() takes an image or a list of images (file paths, encoded bytes, PIL images, "
                        f"numpy arrays), got {kind}")
    items = list(images)
    for index, item in enumerate(items):
        if not isinstance(item, INPUT_TYPES):
            raise TypeError(f"item {index}: {input_type_error(item)}")
    return items


def _top_k(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"top_k must be an integer, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"top_k must be >= 0, got {value}")
    return int(value)


def _default_name(item: object, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return os.fsdecode(item)
    if isinstance(item, Image.Image):
        return getattr(item, "filename", "") or f"image[{index}]"
    if isinstance(item, np.ndarray):
        return f"array[{index}]"
    return f"bytes[{index}]"
