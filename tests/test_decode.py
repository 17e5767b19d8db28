"""osr.serve.decode on a corpus of good and bad inputs generated here."""

from __future__ import annotations

import io
import struct
import zlib

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
