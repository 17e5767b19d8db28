"""Bytes -> HxWx3 uint8 RGB, and the model's resize rule, shared by training and serving.

Torch-free (numpy and Pillow only): ``osr.train`` decodes ImageFolder trees with it and
``osr.serve`` decodes uploads with it, so a served image gets exactly the training pixels.

Decisions (documented because they change pixels):
- EXIF orientation is applied (``ImageOps.exif_transpose``), so a phone photo is seen upright.
- Transparency (RGBA, LA, palette with a transparent index) is composited on WHITE, the way
  browsers and viewers usually show a transparent image on a page.
- 16-bit greyscale ("I;16*", and "I", read as 16-bit data clipped to 0..65535) is scaled to 8 bit
  by /257 with rounding (65535 -> 255), never clipped at 255. Pillow itself reads 16-bit RGB PNGs
  as 8-bit RGB (high byte).
- Animated images (GIF, APNG, WebP): the first frame.
- Float images (mode "F") have no agreed range and are refused.
- The pixel-count limit is checked from the header, before any pixel is decoded.
"""

from __future__ import annotations

import io
from pathlib import Path
from struct import error as struct_error

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000
RESIZE_RULE = "shorter_side_center_crop"

_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class DecodeError(ValueError):
    """An input that is not a usable image. ``reason`` is a short code, str(error) a sentence.

    Reasons: "empty", "not_an_image", "too_large", "truncated", "unsupported", "unreadable".
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image (any format Pillow reads) into an HxWx3 uint8 RGB array."""
    return np.asarray(decode_to_pil(data, max_pixels), dtype=np.uint8)


def decode_file(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode one file; unreadable files raise DecodeError("unreadable") too."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DecodeError("unreadable", f"cannot read file: {exc.strerror or exc}") from exc
    return decode_image(data, max_pixels)


def decode_to_pil(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Like decode_image but returns a loaded RGB PIL image."""
    if not data:
        raise DecodeError("empty", "empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise DecodeError("not_an_image", "not an image: the data is in no image format Pillow can read") from exc
    except Image.DecompressionBombError as exc:
        raise DecodeError("too_large", f"image too large: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError("truncated", f"corrupt image header: {exc}") from exc

    width, height = image.size
    if width <= 0 or height <= 0:
        raise DecodeError("not_an_image", f"image has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise DecodeError(
            "too_large", f"image too large: {width}x{height} = {width * height} pixels, limit is {max_pixels}"
        )
    try:
        image.seek(0)  # first frame of animations
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except DecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct_error) as exc:
        raise DecodeError("truncated", f"corrupt or truncated image data ({image.format}): {exc}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        grey = _sixteen_to_eight_bit(np.asarray(image))
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode == "F":
        raise DecodeError("unsupported", "floating-point images (mode F) are not supported: their range is undefined")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode in ("L", "1") and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _sixteen_to_eight_bit(values: np.ndarray) -> np.ndarray:
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def resize_for_model(
    image: np.ndarray | Image.Image, image_size: int, rule: str = RESIZE_RULE
) -> np.ndarray:
    """The manifest's resize rule: shorter side to ``image_size`` with PIL BILINEAR, then centre crop.

    Scale by image_size / shorter side, round each side, floor the crop offsets. Training
    (``osr.train.data.eval_resize``) and serving both call this. An image that is already
    image_size x image_size is returned unchanged.
    """
    if rule != RESIZE_RULE:
        raise ValueError(f"unknown resize rule {rule!r}; this version knows {RESIZE_RULE!r}")
    pil = image if isinstance(image, Image.Image) else Image.fromarray(_as_rgb_array(image))
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    width, height = pil.size
    if (width, height) != (image_size, image_size):
        scale = image_size / min(width, height)
        new_width = max(image_size, round(width * scale))
        new_height = max(image_size, round(height * scale))
        pil = pil.resize((new_width, new_height), Image.BILINEAR)
        left, top = (new_width - image_size) // 2, (new_height - image_size) // 2
        pil = pil.crop((left, top, left + image_size, top + image_size))
    return np.ascontiguousarray(np.asarray(pil, dtype=np.uint8))


def _as_rgb_array(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got shape {array.shape} dtype {array.dtype}")
    return array
