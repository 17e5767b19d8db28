"""osr.serve.decode on a corpus of good and bad inputs generated here."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osr.serve.decode import DecodeError, decode_file, decode_image, resize_for_model


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR (valid CRC) claims width x height, with one row of pixel data at most."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def _noise(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# -- bad inputs ------------------------------------------------------------------------------------

def _truncated(fmt: str) -> bytes:
    data = _encode(Image.fromarray(_noise(64, 64)), fmt)
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"", "empty", id="zero-bytes"),
        pytest.param(b"this is a text file renamed to photo.jpg\n", "not_an_image", id="text-as-jpg"),
        pytest.param(b"\xff\xd8\xff", "not_an_image", id="three-byte-jpeg-magic"),
        pytest.param(_truncated("JPEG"), "truncated", id="truncated-jpeg"),
        pytest.param(_truncated("PNG"), "truncated", id="truncated-png"),
        pytest.param(_png_header_only(50_000, 50_000), "too_large", id="png-header-50000x50000"),
        # 49 M pixels: under Pillow's own bomb limit, so only our header check can refuse it
        pytest.param(_png_header_only(7_000, 7_000), "too_large", id="png-header-7000x7000"),
    ],
)
def test_bad_inputs_raise_decode_error_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_image(data)
    assert info.value.reason == reason
    assert str(info.value)  # a message a person can read
    assert isinstance(info.value, ValueError)


def test_pixel_limit_applies_before_decoding() -> None:
    data = _encode(Image.fromarray(_noise(100, 50)), "PNG")
    assert decode_image(data, max_pixels=5_000).shape == (50, 100, 3)
    with pytest.raises(DecodeError, match="100x50") as info:
        decode_image(data, max_pixels=4_999)
    assert info.value.reason == "too_large"


def test_unreadable_file(tmp_path) -> None:
    with pytest.raises(DecodeError) as info:
        decode_file(tmp_path / "missing.jpg")
    assert info.value.reason == "unreadable"


def test_float_images_are_refused() -> None:
    data = _encode(Image.fromarray(np.full((4, 4), 0.5, np.float32)), "TIFF")
    with pytest.raises(DecodeError) as info:
        decode_image(data)
    assert info.value.reason == "unsupported"


# -- good inputs -----------------------------------------------------------------------------------

def _assert_rgb(array: np.ndarray, height: int, width: int) -> None:
    assert array.dtype == np.uint8 and array.shape == (height, width, 3)


def test_rgb_png_round_trips_exactly(tmp_path) -> None:
    pixels = _noise(33, 17)
    path = tmp_path / "noise.png"
    Image.fromarray(pixels).save(path)
    np.testing.assert_array_equal(decode_image(path.read_bytes()), pixels)
    np.testing.assert_array_equal(decode_file(path), pixels)


def test_one_pixel_image() -> None:
    decoded = decode_image(_encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"))
    _assert_rgb(decoded, 1, 1)
    assert decoded[0, 0].tolist() == [10, 200, 30]
    resized = resize_for_model(decoded, 32)
    assert resized.shape == (32, 32, 3) and (resized == [10, 200, 30]).all()


def test_greyscale_becomes_three_equal_channels() -> None:
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    decoded = decode_image(_encode(Image.fromarray(grey), "PNG"))
    _assert_rgb(decoded, 16, 16)
    for channel in range(3):
        np.testing.assert_array_equal(decoded[:, :, channel], grey)


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 64 * 4).astype(np.uint16).reshape(4, 64)
    data = _encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really a 16-bit file
    decoded = decode_image(data)
    _assert_rgb(decoded, 4, 64)
    expected = np.round(ramp.astype(np.float64) / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(decoded[:, :, 0], expected)
    assert decoded.max() == 255 and decoded.min() == 0
    assert len(np.unique(decoded)) > 200  # a ramp, not a clipped block of 255s


def test_thirty_two_bit_integer_image_is_read_as_sixteen_bit() -> None:
    values = np.array([[0, 257, 32768, 65535, 70000]], dtype=np.int32)
    decoded = decode_image(_encode(Image.fromarray(values), "TIFF"))
    assert decoded[0, :, 0].tolist() == [0, 1, 128, 255, 255]


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = _encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    decoded = decode_image(data)
    _assert_rgb(decoded, 16, 16)
    np.testing.assert_allclose(decoded.reshape(-1, 3).mean(axis=0), [255, 0, 0], atol=6)


def test_palette_png_with_transparency_is_composited_on_white() -> None:
    palette_image = Image.new("P", (8, 8), 0)
    palette_image.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 - 2) * 3)  # index 0 black, 1 blue
    palette_image.paste(1, (0, 0, 4, 8))  # left half blue, right half index 0
    data = _encode(palette_image, "PNG", transparency=0)
    decoded = decode_image(data)
    _assert_rgb(decoded, 8, 8)
    assert (decoded[:, :4] == [0, 0, 255]).all()
    assert (decoded[:, 4:] == [255, 255, 255]).all()  # transparent black shows as white


def test_rgba_is_composited_on_white() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = [255, 0, 0, 255]  # opaque red
    rgba[0, 1] = [255, 0, 0, 0]  # fully transparent
    rgba[1, 0] = [0, 0, 0, 128]  # half-transparent black
    rgba[1, 1] = [0, 255, 0, 255]
    decoded = decode_image(_encode(Image.fromarray(rgba), "PNG"))
    assert decoded[0, 0].tolist() == [255, 0, 0]
    assert decoded[0, 1].tolist() == [255, 255, 255]
    assert all(abs(int(v) - 127) <= 1 for v in decoded[1, 0])
    assert decoded[1, 1].tolist() == [0, 255, 0]


def test_grey_with_alpha() -> None:
    la = Image.merge("LA", [Image.new("L", (3, 3), 0), Image.new("L", (3, 3), 0)])
    assert (decode_image(_encode(la, "PNG")) == 255).all()


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (10, 6), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    decoded = decode_image(data)
    _assert_rgb(decoded, 6, 10)
    assert (decoded == [255, 0, 0]).all()


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high as stored
    pixels[:, :20] = [255, 0, 0]  # left half red
    pixels[:, 20:] = [0, 0, 255]  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    data = _encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_image(data)
    _assert_rgb(decoded, 40, 20)  # displayed upright: 20 wide, 40 high
    # rotating clockwise brings the stored left (red) half to the top
    np.testing.assert_allclose(decoded[:15].reshape(-1, 3).mean(axis=0), [255, 0, 0], atol=12)
    np.testing.assert_allclose(decoded[25:].reshape(-1, 3).mean(axis=0), [0, 0, 255], atol=12)


# -- resize rule -----------------------------------------------------------------------------------

def test_resize_is_identity_at_model_size() -> None:
    pixels = _noise(32, 32)
    np.testing.assert_array_equal(resize_for_model(pixels, 32), pixels)


def test_resize_crops_the_centre_of_the_longer_side() -> None:
    pixels = _noise(64, 32)  # already 32 on the shorter side: only the crop acts
    np.testing.assert_array_equal(resize_for_model(pixels, 32), pixels[:, 16:48])
    tall = _noise(32, 51)
    np.testing.assert_array_equal(resize_for_model(tall, 32), tall[9:41])  # offset floor(19 / 2) = 9


@pytest.mark.parametrize(
    ("size", "resized", "offset"),
    [
        ((64, 48), (43, 32), (5, 0)), ((48, 64), (32, 43), (0, 5)),
        ((100, 37), (86, 32), (27, 0)), ((7, 9), (32, 41), (0, 4)),
    ],
)
def test_resize_known_answers(size, resized, offset) -> None:
    """Shorter side to 32, longer side rounded, crop offset floored; pixels from PIL BILINEAR."""
    image = Image.fromarray(_noise(*size, seed=sum(size)))
    left, top = offset
    expected = image.resize(resized, Image.BILINEAR).crop((left, top, left + 32, top + 32))
    np.testing.assert_array_equal(resize_for_model(image, 32), np.asarray(expected))
    np.testing.assert_array_equal(resize_for_model(np.asarray(image), 32), np.asarray(expected))


def test_resize_rejects_unknown_rule_and_bad_arrays() -> None:
    with pytest.raises(ValueError, match="rule"):
        resize_for_model(_noise(8, 8), 8, rule="stretch")
    with pytest.raises(ValueError, match="HxWx3"):
        resize_for_model(np.zeros((8, 8), np.uint8), 8)


# -- hardening: cost bounded by the output, accepted shapes and formats, files that are not files ------

def _png_rgb(width: int, height: int, seed: int = 0) -> bytes:
    """A real RGB PNG of any shape, written row by row (Pillow's encoder is slow for 1-pixel rows)."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 256, (height, 3 * width), dtype=np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw, 6))
            + _png_chunk(b"IEND", b""))


_BOUNDED_CHILD = """
import json, resource, sys, time
import numpy as np
from osr.images import decode_to_pil, resize_for_model
with open("/proc/self/status") as status:
    vm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
budget = int(sys.argv[2]) << 20
resource.setrlimit(resource.RLIMIT_AS, (vm_kb * 1024 + budget, resource.RLIM_INFINITY))
def peak_kb():  # VmHWM: ru_maxrss would start at pytest's peak (Linux keeps it across exec)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
data = open(sys.argv[1], "rb").read()
before = peak_kb()
start = time.perf_counter()
out = resize_for_model(decode_to_pil(data), int(sys.argv[3]))
seconds = time.perf_counter() - start
grown = (peak_kb() - before) / 1024
print(json.dumps({"peak_growth_mb": grown, "seconds": seconds, "shape": list(out.shape)}))
"""


def _decode_resize_in_child(tmp_path, data: bytes, image_size: int, budget_mb: int = 1024) -> dict:
    """Decode + resize in a fresh interpreter whose address space may grow by budget_mb at most."""
    image = tmp_path / "image.bin"
    image.write_bytes(data)
    result = subprocess.run(
        [sys.executable, "-c", _BOUNDED_CHILD, str(image), str(budget_mb), str(image_size)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"decode + resize failed within {budget_mb} MB: {result.stderr[-800:]}"
    return json.loads(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and RLIMIT_AS")
@pytest.mark.parametrize(("width", "height"), [(1, 65_535), (65_535, 1), (3, 40_000)], ids=["1xN", "Nx1", "3xN"])
def test_decode_and_resize_of_a_strip_cost_memory_of_the_output_not_of_the_upscaled_strip(
    tmp_path, width: int, height: int
) -> None:
    """Issue 10: the short side scaled to the model size first made a 1 x N strip cost
    image_size^2 * N pixels (1 x 400,000 -> 2.3 GB). The crop is now taken in source coordinates."""
    measured = _decode_resize_in_child(tmp_path, _png_rgb(width, height), 224)
    assert measured["shape"] == [224, 224, 3]
    # the decoded strip itself is <= 65,535 pixels (< 1 MB); the old path needed > 2 GB here
    assert measured["peak_growth_mb"] < 48, measured


_ESTIMATE_CHILD = """
import ctypes, gc, json, sys
from osr.images import decode_checked, decode_memory_bytes, open_checked, resize_for_model
libc = ctypes.CDLL("libc.so.6")
def status(key):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(key))
results = {}
for path in sys.argv[1:]:
    data = open(path, "rb").read()
    image = open_checked(data)
    estimate = decode_memory_bytes(image)
    image.close()
    gc.collect()
    libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # VmHWM := VmRSS
    base = status("VmRSS:")
    resize_for_model(decode_checked(open_checked(data)), 224)
    results[path] = {"estimate": estimate, "peak": status("VmHWM:") - base}
print(json.dumps(results))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_decode_memory_estimate_bounds_the_measured_peak_for_every_format(tmp_path) -> None:
    """serve/decode_gate.py budgets decodes by decode_memory_bytes: it must not undercount (a first
    version counted 5 bytes a pixel for progressive JPEG, which takes 7-12, and for WebP, 16-17)."""
    side = 3000
    photo = Image.fromarray(_noise(250, 250)).resize((side, side), Image.BILINEAR)
    grey16 = Image.fromarray((np.asarray(photo)[:, :, 0].astype(np.uint16) * 257))
    palette = photo.convert("P")
    palette.info["transparency"] = 3
    cases = {
        "baseline.jpg": _encode(photo, "JPEG", quality=90),
        "progressive_420.jpg": _encode(photo, "JPEG", quality=90, progressive=True),
        "progressive_444.jpg": _encode(photo, "JPEG", quality=90, progressive=True, subsampling=0),
        "cmyk_progressive.jpg": _encode(photo.convert("CMYK"), "JPEG", quality=90, progressive=True),
        "rgba.webp": _encode(photo.convert("RGBA"), "WEBP", quality=80),
        "rgba.png": _encode(photo.convert("RGBA"), "PNG", compress_level=1),
        "palette_alpha.png": _encode(palette, "PNG"),
        "grey16.png": _encode(grey16, "PNG"),
        "rgba.tif": _encode(photo.convert("RGBA"), "TIFF", compression="tiff_deflate"),
        "photo.gif": _encode(palette, "GIF"),
        "photo.bmp": _encode(photo, "BMP"),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    result = subprocess.run([sys.executable, "-c", _ESTIMATE_CHILD, *(str(tmp_path / name) for name in cases)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout)
    for path, sizes in measured.items():
        assert sizes["peak"] <= sizes["estimate"], (Path(path).name, sizes)
        assert sizes["estimate"] <= 3 * sizes["peak"] + (16 << 20), (Path(path).name, sizes)  # and not absurd


def test_issue_png_of_1_by_400000_pixels_is_refused_from_its_header() -> None:
    data = _png_header_only(1, 400_000)  # inside the pixel limit; one side longer than any JPEG or GIF
    with pytest.raises(DecodeError, match="65535") as info:
        decode_image(data)
    assert info.value.reason == "too_large"
    assert "1x400000" in str(info.value)
    with pytest.raises(DecodeError, match="side"):
        decode_image(_png_header_only(400_000, 1))


def _reference_resize(image: Image.Image, size: int) -> np.ndarray:
    """The historical rule, written out: shorter side to size (BILINEAR), then the centre crop."""
    width, height = image.size
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return np.asarray(image.resize((new_width, new_height), Image.BILINEAR).crop((left, top, left + size, top + size)))


def test_resize_is_exactly_the_historical_rule_for_aspect_ratios_up_to_16() -> None:
    """Training and serving must keep the pixels the exported models were evaluated with."""
    rng = np.random.default_rng(11)
    for _ in range(50):
        size = int(rng.choice([28, 32, 64, 224]))
        short = int(rng.integers(1, 100))
        long = min(int(short * rng.uniform(1.0, 16.0)), 16 * short)
        width, height = (short, long) if rng.integers(2) else (long, short)
        image = Image.fromarray(_noise(width, height, seed=int(rng.integers(1 << 30))))
        np.testing.assert_array_equal(resize_for_model(image, size), _reference_resize(image, size),
                                      err_msg=f"{width}x{height} -> {size}")


def test_resize_of_extreme_strips_stays_within_one_grey_level_of_the_historical_rule() -> None:
    """Beyond 16:1 the crop box is resized directly (float box coordinates in Pillow): at most 1 level off."""
    rng = np.random.default_rng(12)
    differing = total = 0
    for _ in range(60):
        size = int(rng.choice([28, 32]))
        short = int(rng.integers(1, 24))
        long = int(short * rng.uniform(16.5, 400.0))
        width, height = (short, long) if rng.integers(2) else (long, short)
        image = Image.fromarray(_noise(width, height, seed=int(rng.integers(1 << 30))))
        ours = resize_for_model(image, size).astype(int)
        reference = _reference_resize(image, size).astype(int)
        assert np.abs(ours - reference).max() <= 1, f"{width}x{height} -> {size}"
        differing += int((ours != reference).sum())
        total += ours.size
    assert differing / total < 0.2  # measured about 6 %: most pixels are identical


def test_formats_outside_the_accepted_list_are_refused() -> None:
    """Pillow reads ~40 formats (EPS runs Ghostscript, ICO may hide a larger PNG than its header says);
    uploads are limited to the photo formats."""
    for fmt in ("TGA", "PCX", "ICO", "SGI"):
        data = _encode(Image.fromarray(_noise(16, 16)), fmt)
        with pytest.raises(DecodeError, match="JPEG, PNG") as info:
            decode_image(data)
        assert info.value.reason == "not_an_image", fmt


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "TIFF", "WEBP"])
def test_only_the_first_frame_is_decoded(fmt: str) -> None:
    """Many-frame files cost one frame: frames after the first are never read (here: cut off)."""
    frames = [Image.new("RGB", (64, 48), (255, 0, 0))] + [Image.fromarray(_noise(64, 48, seed=s)) for s in range(9)]
    data = _encode(frames[0], fmt, save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 10
    cut = data[: int(len(data) * 0.6)]  # the later frames are truncated away
    decoded = decode_image(cut if fmt != "WEBP" else data)  # libwebp's demuxer needs the whole file
    _assert_rgb(decoded, 48, 64)
    assert (np.abs(decoded.astype(int) - [255, 0, 0]) <= 8).all()


_ORIENTATION_METHODS = {  # EXIF orientation -> the transpose that shows the image upright
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "I;16"])
def test_exif_orientation_equals_transposing_the_upright_decode(orientation: int, mode: str) -> None:
    pixels = _noise(7, 5, seed=orientation)
    base = {"RGB": Image.fromarray(pixels), "RGBA": Image.fromarray(np.dstack([pixels, pixels[:, :, 0]])),
            "P": Image.fromarray(pixels).convert("P"),
            "I;16": Image.fromarray(pixels[:, :, 0].astype(np.uint16) * 257)}[mode]
    exif = Image.Exif()
    exif[0x0112] = orientation
    plain = decode_image(_encode(base, "PNG"))
    oriented = decode_image(_encode(base, "PNG", exif=exif.tobytes()))
    method = _ORIENTATION_METHODS.get(orientation)
    expected = plain if method is None else np.asarray(Image.fromarray(plain).transpose(method))
    np.testing.assert_array_equal(oriented, expected)


def test_conversion_in_bands_equals_converting_the_whole_image() -> None:
    """Non-RGB images are converted a band of rows at a time (bounded temporaries); same pixels."""
    from osr.images import to_rgb

    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (37, 23), dtype=np.uint8)
    palette = Image.fromarray(_noise(23, 37)).convert("P")
    palette.info["transparency"] = bytes(rng.integers(0, 256, 256, dtype=np.uint8))
    single = Image.fromarray(grey).convert("P")
    single.info["transparency"] = 3
    images = {
        "RGBA": Image.fromarray(np.dstack([_noise(23, 37), grey])),
        "LA": Image.merge("LA", [Image.fromarray(grey), Image.fromarray(grey[::-1].copy())]),
        "P+tRNS": palette, "P+index": single,
        "L": Image.fromarray(grey), "1": Image.fromarray(grey).convert("1"),
        "I;16": Image.fromarray(rng.integers(0, 65536, (37, 23)).astype(np.uint16)),
        "I": Image.fromarray(rng.integers(-5, 70000, (37, 23)).astype(np.int32)),
        "CMYK": Image.fromarray(_noise(23, 37)).convert("CMYK"),
    }
    for name, image in images.items():
        whole = np.asarray(to_rgb(image, band_pixels=10**9))
        for band_pixels in (1, 23, 50, 400):
            np.testing.assert_array_equal(np.asarray(to_rgb(image, band_pixels=band_pixels)), whole,
                                          err_msg=f"{name} in bands of {band_pixels} pixels")


def _finishes(function, timeout_s: float = 5.0) -> tuple[bool, object]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(_capture(function)), daemon=True)
    thread.start()
    thread.join(timeout_s)
    return (not thread.is_alive()), (result[0] if result else None)


def _capture(function):
    try:
        return function()
    except Exception as exc:  # returned for the assertions
        return exc


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_decode_file_refuses_a_fifo_at_once(tmp_path) -> None:
    """Issue 10: a FIFO named *.jpg blocked osr-score forever (open() waits for a writer)."""
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    done, outcome = _finishes(lambda: decode_file(fifo))
    if not done:  # unblock the reader so the thread can end, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert done, "decode_file blocked on a FIFO"
    assert isinstance(outcome, DecodeError) and outcome.reason == "unreadable", outcome
    assert "not a regular file" in str(outcome) and "FIFO" in str(outcome)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_decode_file_does_not_block_when_a_file_is_swapped_for_a_fifo(tmp_path, monkeypatch) -> None:
    """The race between the check and the open: the open itself must not wait (O_NONBLOCK)."""
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    regular = os.stat(__file__)
    monkeypatch.setattr(os, "stat", lambda *args, **kwargs: regular)  # the check sees a regular file
    done, outcome = _finishes(lambda: decode_file(fifo))
    if not done:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert done, "decode_file blocked on a FIFO that passed the first check"
    assert isinstance(outcome, DecodeError) and "not a regular file" in str(outcome), outcome


def test_decode_file_refuses_directories_and_devices(tmp_path) -> None:
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    for path, kind in ((folder, "directory"), (Path(os.devnull), "character device")):
        with pytest.raises(DecodeError, match=kind) as info:
            decode_file(path)
        assert info.value.reason == "unreadable"
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DecodeError) as info:
        decode_file(empty)
    assert info.value.reason == "empty"


def test_jpeg_with_hundreds_of_scans_is_refused_before_decoding() -> None:
    """libjpeg runs every scan over the whole image: many tiny scans are a CPU bomb (5,000 repeats
    of one scan of a 1000 x 1000 image took 3.3 s here; a normal progressive JPEG has about 10)."""
    progressive = _encode(Image.fromarray(_noise(64, 48)), "JPEG", progressive=True, quality=90)
    assert decode_image(progressive).shape == (48, 64, 3)
    last_scan, end = progressive.rindex(b"\xff\xda"), progressive.rindex(b"\xff\xd9")
    bomb = progressive[:end] + progressive[last_scan:end] * 150 + progressive[end:]
    assert Image.open(io.BytesIO(bomb)).format == "JPEG"
    with pytest.raises(DecodeError, match="scans") as info:
        decode_image(bomb)
    assert info.value.reason == "unsupported"


def test_decode_file_refuses_a_file_larger_than_any_image_within_the_pixel_limit(tmp_path) -> None:
    """osr-score reads each file whole: a 10 GB file named *.jpg must not be read into memory."""
    from osr.images import max_file_bytes

    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as handle:
        handle.truncate(max_file_bytes(1_000) + 1)  # sparse: nothing is written
    with pytest.raises(DecodeError, match="file too large") as info:
        decode_file(huge, max_pixels=1_000)
    assert info.value.reason == "too_large"
    assert max_file_bytes(40_000_000) == 8 * 40_000_000 + (16 << 20)  # 16-bit RGBA, uncompressed
