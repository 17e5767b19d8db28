"""The one way an input becomes a model-sized image, for every entry point that takes images:
osr-serve's /v1/classify, osr-score, and the Python API (``Model.classify``). (/v2 takes tensors
already resized; its limits are oip.py's.)

Every kind of input goes through the same checks, in the same order, before anything costly:

- encoded bytes (bytes, bytearray, memoryview): their length against the byte limit, then the
  header (``osr.images.open_checked``: the format allowlist, pixels, sides, JPEG scans);
- a file path (str or os.PathLike): a regular file, its size from ``fstat`` against the byte
  limit, its header read from the file (``osr.images.read_image_file``), before the rest is read;
  then as bytes;
- a PIL image that is not decoded yet (``Image.open`` is lazy): its source bytes are read back
  (at most the byte limit + 1) and checked as bytes, so the allowlist and the scan limits hold
  and the pixels are those of the same file decoded anywhere else;
- a decoded PIL image (or one made in memory): its size, and its format against the allowlist
  when it has one; the scans cannot be counted any more, but the decode they cost is already done;
- a numpy array (HxW, HxWx1, HxWx3 or HxWx4; uint8, or uint16 grey): its shape, dtype and pixels,
  before any copy.

Wrong types raise TypeError; inputs that are no usable image raise ``DecodeError`` with a reason
and one sentence (the message every entry point shows). ``check_input`` stops before decoding
and says how much memory the decode will take, so the server can budget it (serve/decode_gate.py).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Union

import numpy as np
from PIL import Image

from osr.images import (
    ACCEPTED_FORMATS,
    DEFAULT_MAX_PIXELS,
    MAX_SIDE,
    DecodeError,
    check_header,
    decode_checked,
    decode_memory_bytes,
    max_file_bytes,
    not_accepted,
    open_checked,
    read_image_file,
    resize_for_model,
)

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]
INPUT_TYPES = (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray)
ACCEPTED_PIL_FORMATS = frozenset(ACCEPTED_FORMATS) | {"MPO"}  # Pillow names a multi-picture JPEG MPO


@dataclass(frozen=True)
class InputLimits:
    """The limits every entry point applies; ``max_bytes`` follows from ``max_pixels``."""

    max_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def max_bytes(self) -> int:
        """The largest encoded input (``osr.images.max_file_bytes``: 336 MB at the default pixels)."""
        return max_file_bytes(self.max_pixels)


@dataclass(frozen=True)
class CheckedInput:
    """An input whose limits hold and whose pixels are not decoded yet (or were decoded by the
    caller). ``memory_bytes`` bounds what ``decode`` and the resize will allocate."""

    memory_bytes: int
    source: bytes | Image.Image | np.ndarray
    max_pixels: int

    def decode(self) -> Image.Image:
        """The RGB pixels (the header is read again from bytes: waiting inputs hold no decoder state)."""
        if isinstance(self.source, bytes):
            return decode_checked(open_checked(self.source, self.max_pixels))
        if isinstance(self.source, np.ndarray):
            return decode_checked(Image.fromarray(np.ascontiguousarray(self.source)))
        return decode_checked(self.source, owned=False)


def input_type_error(item: object) -> TypeError:
    return TypeError(f"cannot classify a {type(item).__name__}: pass a file path (str or os.PathLike), encoded "
                     "bytes, a PIL image or a numpy array")


def check_input(item: ImageInput, limits: InputLimits = InputLimits()) -> CheckedInput:
    """The checks above; TypeError for a wrong type, DecodeError for an input that is no usable image."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        return _check_bytes(item, limits)
    if isinstance(item, (str, os.PathLike)):
        return _check_bytes(read_image_file(item, limits.max_bytes, limits.max_pixels), limits)
    if isinstance(item, Image.Image):
        return _check_pil(item, limits)
    if isinstance(item, np.ndarray):
        return _check_array(item, limits)
    raise input_type_error(item)


def prepare_input(item: ImageInput, image_size: int, limits: InputLimits = InputLimits()) -> np.ndarray:
    """``check_input``, decode, and the model's resize: an [image_size, image_size, 3] uint8 array."""
    return resize_for_model(check_input(item, limits).decode(), image_size)


def error_message(exc: Exception) -> str:
    """The message of an input's error row: the DecodeError's sentence, or the unexpected error's
    type and text (a library failing on one odd image)."""
    if isinstance(exc, DecodeError):
        return str(exc)
    return f"cannot decode: {type(exc).__name__}: {exc}"


def _check_bytes(data: bytes | bytearray | memoryview, limits: InputLimits) -> CheckedInput:
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > limits.max_bytes:  # before any copy
        raise DecodeError("too_large", f"file too large: {size} bytes, limit is {limits.max_bytes}")
    data = data if isinstance(data, bytes) else bytes(data)
    image = open_checked(data, limits.max_pixels)
    try:
        return CheckedInput(decode_memory_bytes(image), data, limits.max_pixels)
    finally:
        image.close()


def _check_pil(image: Image.Image, limits: InputLimits) -> CheckedInput:
    check_header(image, limits.max_pixels)
    source = getattr(image, "fp", None)
    if getattr(image, "tile", None) and source is not None:  # opened, not decoded: check the bytes it will be decoded from
        return _check_bytes(_source_bytes(image, source, limits), limits)
    if image.format is not None and image.format not in ACCEPTED_PIL_FORMATS:
        raise not_accepted()
    return CheckedInput(decode_memory_bytes(image), image, limits.max_pixels)


def _source_bytes(image: Image.Image, source: io.IOBase, limits: InputLimits) -> bytes:
    """The encoded bytes a lazily opened image reads its pixels from (the whole file or buffer)."""
    try:
        position = source.tell()
        source.seek(0)
        data = source.read(limits.max_bytes + 1)
        source.seek(position)
    except (OSError, ValueError) as exc:  # a closed file
        raise DecodeError("unreadable", f"cannot read the image's data: {exc}") from exc
    if len(data) > limits.max_bytes:
        raise DecodeError("too_large", f"file too large: more than {limits.max_bytes} bytes, "
                                       f"limit is {limits.max_bytes}")
    return data


def _check_array(array: np.ndarray, limits: InputLimits) -> CheckedInput:
    """Shape, dtype and pixels from the array's metadata: nothing is copied before they hold."""
    shape = array.shape
    if array.ndim == 3 and shape[2] == 1:
        array = array[:, :, 0]  # a view
    if array.ndim not in (2, 3) or (array.ndim == 3 and shape[2] not in (3, 4)):
        raise DecodeError("unsupported", f"expected an HxW, HxWx3 or HxWx4 array, got shape {list(shape)}")
    height, width = shape[:2]
    if width <= 0 or height <= 0:
        raise DecodeError("not_an_image", f"image has an empty size {width}x{height}")
    if width * height > limits.max_pixels:
        raise DecodeError("too_large", f"image too large: {width}x{height} = {width * height} pixels, "
                                       f"limit is {limits.max_pixels}")
    if max(width, height) > MAX_SIDE:
        raise DecodeError("too_large", f"image too large: {width}x{height} has a side longer than {MAX_SIDE} pixels")
    grey16 = array.dtype == np.uint16 and array.ndim == 2
    if array.dtype != np.uint8 and not grey16:
        raise DecodeError("unsupported", f"expected uint8 pixels (or uint16 grey), got {array.dtype}")
    # the contiguous copy Image.fromarray needs, Pillow's copy (4 bytes a pixel at most), its RGB copy
    bands = 1 if array.ndim == 2 else array.shape[2]
    per_pixel = array.itemsize * bands + 4 + (0 if bands == 3 else 4) + 1
    return CheckedInput(width * height * per_pixel + (4 << 20), array, limits.max_pixels)
