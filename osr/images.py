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
- Animated and multi-page images (GIF, APNG, WebP, TIFF, MPO): the first frame; later frames
  are never read.
- Float images (mode "F") have no agreed range and are refused.
- Accepted formats: ``ACCEPTED_FORMATS`` (the photo formats). Pillow reads about 40 more; some run
  external programs (EPS: Ghostscript) or decode more pixels than their header says (ICO).
- The limits are checked before any pixel is decoded: at most ``max_pixels`` pixels and at most
  ``MAX_SIDE`` pixels on a side (the largest JPEG or GIF; Pillow keeps one pointer per row, so a
  1 x 40,000,000 strip would cost 3x a square image of the same pixels), and a JPEG has at most
  ``MAX_JPEG_SCANS`` scans and at most ``MAX_JPEG_SCAN_PIXELS`` scans x pixels (libjpeg runs every
  scan over the whole image).
- ``open_checked`` (the header and every limit) and ``decode_checked`` (the pixels) are separate
  steps, so a caller can budget the memory a decode will take (``decode_memory_bytes``) before
  any pixel is decoded; ``osr/inputs.py`` is the one path every entry point takes through them.
- Memory and time after decoding are bounded by the output: non-RGB images are converted to RGB a
  band of rows at a time, and ``resize_for_model`` never builds the upscaled long side.

Cost (bench/perf_decode.py, docs/security.md "Image decoding"): peak memory of decode + resize
is at most about 4 MB + 8.2 bytes per source pixel (the decoded image and its RGB copy) + 4 bytes
x image_size x the shorter side, whatever the shape; the source is at most ``max_pixels``.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from struct import error as struct_error
from typing import IO

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000
MAX_SIDE = 65_535  # pixels; the largest side a JPEG or GIF can have
RESIZE_RULE = "shorter_side_center_crop"
# Pillow plugin names (``Image.open(formats=...)``); "JPEG" includes MPO, the JPEG of cameras that
# store several pictures, and "PPM" the PBM/PGM/PPM/PNM family
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm",
})
# Up to this ratio of the long to the short side the resize is exactly the historical full resize
# followed by the crop (it costs about ratio * output pixels); beyond it the crop box is resized
# directly, which is within one grey level of it (Pillow takes the box in float32).
EXACT_RESIZE_MAX_RATIO = 16
# libjpeg decodes every scan of a progressive JPEG over the whole image: a file of many tiny scans
# costs minutes of CPU. Encoders write about 10 (Pillow, libjpeg) and rarely more than 30.
MAX_JPEG_SCANS = 100
# ...and the cost of a scan grows with the image: each took about 0.5 ns a pixel here (a 40 MP
# image with 100 scans took 2.2 s, with 10 scans 0.34 s; bench/hardening_load.py, jpeg_scan_cost), so
# scans x pixels is capped too: 16 scans at the default 40 MP, 100 scans up to 6.4 MP.
MAX_JPEG_SCAN_PIXELS = 16 * DEFAULT_MAX_PIXELS
# Pillow stores every mode not listed in 4 bytes a pixel
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_DECODE_OVERHEAD_BYTES = 4 << 20  # the decoder's own buffers, the bands of the conversion

_BAND_PIXELS = 1 << 20  # non-RGB images are converted this many pixels at a time
_BAND_TEMPORARY_BYTES = 32 * _BAND_PIXELS  # at most 6 RGBA copies or 4 int64 arrays of one band
_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_UPRIGHT = {  # EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
)


class DecodeError(ValueError):
    """An input that is not a usable image. ``reason`` is a short code, str(error) a sentence.

    Reasons: "empty", "not_an_image", "too_large", "truncated", "unsupported", "unreadable".
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image (an accepted format) into an HxWx3 uint8 RGB array."""
    return np.asarray(decode_to_pil(data, max_pixels), dtype=np.uint8)


def decode_file(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read (``read_image_file``) and decode one file; unreadable files raise DecodeError too."""
    return decode_image(read_image_file(path, max_file_bytes(max_pixels), max_pixels), max_pixels)


def max_file_bytes(max_pixels: int) -> int:
    """The largest file an image of ``max_pixels`` pixels can need: 8 bytes a pixel (uncompressed
    16-bit RGBA or CMYK) plus 16 MiB of metadata."""
    return 8 * max_pixels + (16 << 20)


def read_image_file(path: str | Path, max_bytes: int | None = None, max_pixels: int | None = None) -> bytes:
    """The bytes of a regular file; anything else raises DecodeError("unreadable") at once.

    A FIFO, socket, device or directory is refused from ``os.stat`` before it is opened, and the
    open itself is non-blocking and checked again (``fstat``), so a file swapped for a FIFO in
    between cannot block the caller either. A file over ``max_bytes`` is refused ("too_large")
    without reading it. With ``max_pixels``, the header is checked first (``check_header``, read
    from the file: a few KB), so a large file that is no image, or an image over the limits, is
    refused before the rest of it is read.
    """
    try:
        kind = _not_regular(os.stat(path).st_mode)
        if kind:
            raise DecodeError("unreadable", f"not a regular file: {kind}")
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with open(descriptor, "rb") as handle:
            info = os.fstat(descriptor)
            kind = _not_regular(info.st_mode)
            if kind:
                raise DecodeError("unreadable", f"not a regular file: {kind}")
            if max_bytes is not None and info.st_size > max_bytes:
                raise DecodeError("too_large", f"file too large: {info.st_size} bytes, limit is {max_bytes}")
            if max_pixels is not None:
                if info.st_size == 0:
                    raise DecodeError("empty", "empty file (0 bytes)")
                check_header(_open_header(handle), max_pixels)
                handle.seek(0)
            if max_bytes is None:
                return handle.read()
            data = handle.read(max_bytes + 1)  # the file may have grown since fstat
    except OSError as exc:
        raise DecodeError("unreadable", f"cannot read file: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise DecodeError("too_large", f"file too large: more than {max_bytes} bytes, limit is {max_bytes}")
    return data


def _not_regular(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a file")


def decode_to_pil(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Like decode_image but returns a loaded RGB PIL image."""
    return decode_checked(open_checked(data, max_pixels))


def decode_checked(image: Image.Image, *, owned: bool = True) -> Image.Image:
    """The RGB pixels of an image that ``open_checked`` opened (or a PIL image already decoded):
    first frame, EXIF orientation, the colour rules above. ``owned``: the image may be closed as
    soon as its RGB copy exists (never for a caller's image)."""
    try:
        if owned:
            image.seek(0)  # first frame of animations (a caller's image keeps the frame it is on)
        image.load()
        upright = _UPRIGHT.get(image.getexif().get(ExifTags.Base.Orientation, 1))
        rgb = to_rgb(image)
        if rgb is not image and owned:
            image.close()  # frees the decoded pixels before a transpose allocates its copy
        # conversion is per pixel, so converting before the transpose gives the same pixels
        return rgb if upright is None else rgb.transpose(upright)
    except DecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct_error) as exc:
        raise DecodeError("truncated", f"corrupt or truncated image data ({image.format}): {exc}") from exc


def open_checked(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open (header only) an image of an accepted format and check every limit: size, sides, and
    a JPEG's scans. Nothing is decoded; ``decode_memory_bytes`` says what decoding it will take."""
    if not data:
        raise DecodeError("empty", "empty file (0 bytes)")
    image = check_header(_open_header(io.BytesIO(data)), max_pixels)
    if image.format in ("JPEG", "MPO"):
        width, height = image.size
        scans = _jpeg_scans(data)
        if scans > MAX_JPEG_SCANS:
            raise DecodeError("unsupported", f"JPEG with {scans} scans; at most {MAX_JPEG_SCANS} are accepted "
                                             "(a progressive JPEG has about 10)")
        if scans * width * height > MAX_JPEG_SCAN_PIXELS:
            raise DecodeError("unsupported", f"JPEG with {scans} scans of {width}x{height} pixels; at most "
                                             f"{MAX_JPEG_SCAN_PIXELS} scans x pixels are accepted "
                                             f"({MAX_JPEG_SCAN_PIXELS // (width * height)} scans at this size; "
                                             "a progressive JPEG has about 10)")
    return image


def _open_header(source: IO[bytes]) -> Image.Image:
    try:
        return Image.open(source, formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError as exc:
        raise not_accepted() from exc
    except Image.DecompressionBombError as exc:
        raise DecodeError("too_large", f"image too large: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct_error) as exc:
        raise DecodeError("truncated", f"corrupt image header: {exc}") from exc


def not_accepted() -> DecodeError:
    """The error of data in none of ``ACCEPTED_FORMATS``."""
    return DecodeError("not_an_image",
                       f"not an image: the data is in none of the accepted formats ({', '.join(ACCEPTED_FORMATS)})")


def check_header(image: Image.Image, max_pixels: int) -> Image.Image:
    """The size limits from an image's header (or a decoded image's size): DecodeError past them."""
    width, height = image.size
    if width <= 0 or height <= 0:
        raise DecodeError("not_an_image", f"image has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise DecodeError(
            "too_large", f"image too large: {width}x{height} = {width * height} pixels, limit is {max_pixels}"
        )
    if max(width, height) > MAX_SIDE:
        raise DecodeError(
            "too_large", f"image too large: {width}x{height} has a side longer than {MAX_SIDE} pixels"
        )
    return image


def decode_memory_bytes(image: Image.Image) -> int:
    """An upper bound of the memory ``decode_checked`` + ``resize_for_model`` take for this opened
    image: its pixels as Pillow stores them, their RGB copy unless already RGB, a byte a pixel for
    the resize, a band's temporaries for a conversion, what the decoder itself holds (libjpeg every DCT
    coefficient of a progressive JPEG, 2 bytes a sample; libwebp its own frame and canvas), the
    header's text and profiles, and 4 MiB. tests/test_decode.py checks it against the measured
    peak for each format; bench/perf_decode.py measured 3.9 bytes a pixel for baseline RGB JPEG,
    5.3 for palette PNG, 8.2 for RGBA PNG."""
    width, height = image.size
    per_pixel = _STORED_BYTES.get(image.mode, 4) + (0 if image.mode == "RGB" else 4) + 1
    overhead = _DECODE_OVERHEAD_BYTES
    if image.format in ("JPEG", "MPO") and image.info.get("progressive"):
        factors = [(h, v) for _, h, v, _ in getattr(image, "layer", [])] or [(1, 1)] * len(image.getbands())
        most = max(h for h, _ in factors) * max(v for _, v in factors)
        per_pixel += 2 * sum(h * v for h, v in factors) / most
    elif image.format == "WEBP":
        per_pixel += 12
    if image.mode != "RGB":  # a band's temporaries: RGBA copies for compositing, int64s for 16-bit scaling
        overhead += _BAND_TEMPORARY_BYTES
    metadata = sum(len(value) for value in image.info.values() if isinstance(value, (str, bytes)))
    return int(width * height * per_pixel) + metadata + overhead


def _jpeg_scans(data: bytes) -> int:
    """Start-of-scan markers from the first scan on (entropy-coded data never holds FF DA: every
    FF in it is followed by 00 or a restart marker)."""
    first = data.find(b"\xff\xda")
    return 0 if first < 0 else data.count(b"\xff\xda", first)


def to_rgb(image: Image.Image, band_pixels: int = _BAND_PIXELS) -> Image.Image:
    """RGB with the decisions above, converted band by band so the temporaries stay small
    (RGBA compositing alone makes three full-size RGBA copies). An RGB image is returned as is."""
    if image.mode == "RGB":
        return image
    if image.mode == "F":
        raise DecodeError("unsupported", "floating-point images (mode F) are not supported: their range is undefined")
    width, height = image.size
    rows = max(1, band_pixels // width)
    if rows >= height:
        return _pixels_to_rgb(image)
    rgb = Image.new("RGB", image.size)
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(height, top + rows)))  # keeps palette and transparency
        rgb.paste(_pixels_to_rgb(band), (0, top))
    return rgb


def _pixels_to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        grey = _sixteen_to_eight_bit(np.asarray(image))
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))
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

    Up to ``EXACT_RESIZE_MAX_RATIO`` (long side / short side) this is literally that full resize
    and crop. Beyond it the full resize would hold ratio * image_size^2 pixels (2.3 GB for a
    1 x 400,000 strip), so only the crop box, in source coordinates, is resized; the result is
    within one grey level of the full resize (tests/test_decode.py pins both).
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
        left, top = (new_width - image_size) // 2, (new_height - image_size) // 2
        crop = (left, top, left + image_size, top + image_size)
        if (new_width, new_height) == (width, height):
            pil = pil.crop(crop)
        elif max(width, height) <= EXACT_RESIZE_MAX_RATIO * min(width, height):
            pil = pil.resize((new_width, new_height), Image.BILINEAR).crop(crop)
        else:
            x_step, y_step = width / new_width, height / new_height  # source pixels per resized pixel
            box = (left * x_step, top * y_step, (left + image_size) * x_step, (top + image_size) * y_step)
            pil = pil.resize((image_size, image_size), Image.BILINEAR, box=box)
    return np.ascontiguousarray(np.asarray(pil, dtype=np.uint8))


def _as_rgb_array(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got shape {array.shape} dtype {array.dtype}")
    return array
