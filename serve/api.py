"""The Python API: load a model repository, classify paths, bytes, PIL images or numpy arrays.

    from osr.serve import load_model

    with load_model("model_repository") as model:           # the only model there, newest version
        rows = model.classify(["samples/airplane.jpg", pil_image, array, jpeg_bytes])
        print(model.card["classes"], rows[0]["class_name"], rows[0]["p_value"])

Each row is the row osr-score writes and /v1/classify returns (serve/results.py): path, status,
error, class_index (-1 = unknown), class_name ("unknown"), score, p_value, unknown, top_k. An input
that is no usable image becomes a row with status "error"; it does not fail the others. Inputs go
through the same decoder as the CLI and the service (osr/images.py: EXIF orientation, transparency
on white, 16-bit scaled to 8), so the same file gives the same row everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps

from osr.images import _to_rgb  # the decoder's colour rules, for images that arrive decoded
from osr.serve.card import model_card
from osr.serve.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_file, decode_to_pil
from osr.serve.monitor import Summary, summarize_rows
from osr.serve.predictor import Predictor
from osr.serve.results import error_row

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]
CHUNK = 256  # images decoded and held at once


class Model:
    """A loaded model. ``classify`` is thread-safe; ``close()`` (or ``with``) releases the backend."""

    def __init__(self, predictor: Predictor, top_k: int = 5) -> None:
        self.predictor = predictor
        self.top_k = int(top_k)

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
        return model_card(self.predictor.manifest)

    # -- classification ------------------------------------------------------------------------------

    def classify(
        self,
        images: ImageInput | Iterable[ImageInput],
        *,
        names: Sequence[str] | None = None,
        top_k: int | None = None,
    ) -> list[dict]:
        """One row per image, in input order.

        ``images``: one input or an iterable of them; a 4-D uint8 array is a batch of images.
        Each input is a file path (str or os.PathLike), encoded bytes (any format Pillow reads), a
        PIL image, or an HxW / HxWx3 / HxWx4 array (uint8 or 16-bit; RGB order). ``names`` sets
        the rows' ``path`` (default: the path as given, a PIL image's filename, else
        ``bytes[i]`` / ``image[i]`` / ``array[i]``).
        """
        items = [images] if _is_single(images) else list(images)
        if names is not None and len(names) != len(items):
            raise ValueError(f"{len(items)} images but {len(names)} names")
        k = self.top_k if top_k is None else int(top_k)
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
        return summarize_rows(rows, self.predictor.manifest["threshold"])

    def _prepare(self, item: ImageInput, name: str) -> np.ndarray | dict:
        """The model-sized image, or an error row (as the CLI and the service make them)."""
        if not isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray)):
            raise TypeError(f"cannot classify a {type(item).__name__}: pass a path, bytes, a PIL image or a numpy array")
        max_pixels = self.predictor.max_pixels
        try:
            if isinstance(item, (str, os.PathLike)):
                image: np.ndarray | Image.Image = decode_file(item, max_pixels)
            elif isinstance(item, (bytes, bytearray, memoryview)):
                image = decode_to_pil(bytes(item), max_pixels)
            elif isinstance(item, Image.Image):
                image = _decoded_pil(item, max_pixels)
            else:
                image = _decoded_array(item, max_pixels)
            return self.predictor.preprocess(image)
        except DecodeError as exc:
            return error_row(name, str(exc))
        except Exception as exc:  # one odd image must not stop the others (as in osr-score)
            return error_row(name, f"cannot decode: {type(exc).__name__}: {exc}")

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


def _is_single(images: object) -> bool:
    if isinstance(images, np.ndarray):
        return images.ndim in (2, 3)
    return isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image))


def _default_name(item: object, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return os.fsdecode(item)
    if isinstance(item, Image.Image):
        return getattr(item, "filename", "") or f"image[{index}]"
    if isinstance(item, np.ndarray):
        return f"array[{index}]"
    return f"bytes[{index}]"


def _decoded_pil(image: Image.Image, max_pixels: int) -> Image.Image:
    """A PIL image through the decoder's rules: size limit, EXIF orientation, RGB conversion."""
    width, height = image.size
    if width * height > max_pixels:
        raise DecodeError("too_large", f"image too large: {width}x{height} = {width * height} pixels, "
                                       f"limit is {max_pixels}")
    if width <= 0 or height <= 0:
        raise DecodeError("not_an_image", f"image has an empty size {width}x{height}")
    return _to_rgb(ImageOps.exif_transpose(image))


def _decoded_array(array: np.ndarray, max_pixels: int) -> Image.Image:
    """HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA) uint8, or 16-bit grey, as the decoder would see it."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise DecodeError("unsupported", f"expected an HxW, HxWx3 or HxWx4 array, got shape {list(array.shape)}")
    if array.dtype == np.uint16 and array.ndim == 2:
        return _decoded_pil(Image.fromarray(array), max_pixels)  # mode I;16, scaled to 8 bits by the decoder
    if array.dtype != np.uint8:
        raise DecodeError("unsupported", f"expected uint8 pixels (or uint16 grey), got {array.dtype}")
    return _decoded_pil(Image.fromarray(np.ascontiguousarray(array)), max_pixels)

