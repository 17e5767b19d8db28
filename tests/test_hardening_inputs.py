"""One input path for every entry point (issue 20): the same hostile corpus gets the same answer
from /v1/classify, osr-score and the Python API (bytes, paths, lazily opened PIL images), arrays
over the pixel limit are refused before any copy, big non-images before they are read, and wrong
argument types raise TypeError."""

from __future__ import annotations

import io
import json
import struct
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from osr.images import MAX_JPEG_SCAN_PIXELS, MAX_JPEG_SCANS, DecodeError
from osr.inputs import InputLimits, check_input, prepare_input
from osr.serve import load_model
from osr.serve.api import Model
from osr.serve.app import create_app
from osr.serve.score_cli import main as score_main
from osr.serve.settings import Settings


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


def scan_bomb(side: int, repeats: int) -> bytes:
    """A flat progressive JPEG whose last scan is repeated: libjpeg runs each over the whole image."""
    data = encode(Image.new("RGB", (side, side), (90, 120, 200)), "JPEG", quality=90, progressive=True)
    last_scan, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last_scan:end] * repeats + data[end:]


def hostile_corpus() -> dict[str, bytes]:
    """Inputs every entry point must refuse, each for its own reason."""
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    png = encode(Image.fromarray(noise), "PNG")
    return {
        "empty.jpg": b"",
        "notes.jpg": b"plain text\n",
        "truncated.png": png[: len(png) // 2],
        "icon.ico": encode(Image.fromarray(noise), "ICO"),  # outside the format allowlist
        "pcx.pcx": encode(Image.fromarray(noise), "PCX"),
        "float.tif": encode(Image.fromarray(noise[:, :, 0].astype(np.float32)), "TIFF"),
        "too_many_pixels.png": png_header_only(7000, 7000),  # over the test model's 40 MP default
        "strip_1x400000.png": png_header_only(1, 400_000),
        "scans_150.jpg": scan_bomb(64, 150),  # over MAX_JPEG_SCANS
        "scan_pixels.jpg": scan_bomb(6000, 10),  # 20 scans of 36 MP: over MAX_JPEG_SCAN_PIXELS
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    paths = {}
    for name, data in hostile_corpus().items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


@pytest.fixture(scope="module")
def model(tiny_model_repository: Path) -> Iterator[Model]:
    with load_model(tiny_model_repository) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def client(tiny_model_repository: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(model_repository=tiny_model_repository, threads=1))) as test_client:
        deadline = time.monotonic() + 60
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield test_client


def http_error(client: TestClient, name: str, data: bytes) -> str:
    response = client.post("/v1/classify", files=[("files", (name, data, "application/octet-stream"))])
    assert response.status_code == 415, response.text
    detail = response.json()["detail"]
    prefix = f"no file is a usable image: {name}: "
    assert detail.startswith(prefix), detail
    return detail[len(prefix):]


def test_the_corpus_is_hostile_for_the_reasons_it_says() -> None:
    assert scan_bomb(64, 150).count(b"\xff\xda") > MAX_JPEG_SCANS
    assert scan_bomb(6000, 10).count(b"\xff\xda") * 6000 * 6000 > MAX_JPEG_SCAN_PIXELS
    for name, data in hostile_corpus().items():
        with pytest.raises(DecodeError):
            prepare_input(data, 32)
            pytest.fail(name)


def test_http_cli_and_python_api_give_the_same_error_for_each_hostile_input(
        client: TestClient, model: Model, corpus: dict[str, Path], tiny_model_repository: Path,
        tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    assert score_main([*(str(p) for p in corpus.values()), "--model-repository", str(tiny_model_repository),
                       "--out", str(out)]) == 3
    cli = {Path(row["path"]).name: row["error"] for row in map(json.loads, out.read_text().splitlines())}
    for name, path in corpus.items():
        data = path.read_bytes()
        expected = http_error(client, name, data)
        assert cli[name] == expected, name
        from_bytes, from_path = model.classify([data, path])
        assert from_bytes["status"] == from_path["status"] == "error"
        assert from_bytes["error"] == from_path["error"] == expected, name
        try:
            lazy = Image.open(io.BytesIO(data))  # what a user of PIL holds: opened, not decoded
        except Exception:  # noqa: BLE001 - Pillow itself cannot open it: no PIL image to pass
            continue
        (row,) = model.classify(lazy)
        assert row["error"] == expected, name


def test_a_lazy_pil_image_of_a_scan_bomb_is_refused_before_it_is_decoded(model: Model,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20: classify(Image.open(f)) decoded a 310-scan JPEG for 4.7 s."""
    import osr.inputs

    decoded: list[object] = []
    original = osr.inputs.decode_checked
    monkeypatch.setattr(osr.inputs, "decode_checked", lambda *a, **k: decoded.append(a) or original(*a, **k))
    bomb = Image.open(io.BytesIO(scan_bomb(2000, 310)))
    (row,) = model.classify(bomb)
    assert row["status"] == "error" and "scans" in row["error"]
    assert decoded == [] and bomb.tile  # refused from its bytes: neither osr nor Pillow decoded it


def test_a_decoded_pil_image_of_a_format_outside_the_allowlist_is_refused(model: Model) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    icon = Image.open(io.BytesIO(encode(Image.fromarray(noise), "ICO")))
    icon.load()
    (row,) = model.classify(icon)
    assert row["error"].startswith("not an image: the data is in none of the accepted formats (JPEG, PNG")
    made = Image.fromarray(noise)  # made in memory: no format, nothing decoded by Pillow's readers
    assert model.classify(made)[0]["status"] == "ok"


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_an_array_over_the_pixel_limit_is_refused_before_any_copy(tiny_model_repository: Path,
                                                                    layout: str) -> None:
    """Issue 20: arrays over the limit were copied first (+240 MiB, +423 MiB non-contiguous)."""
    with load_model(tiny_model_repository, max_pixels=10_000) as small:
        big = np.zeros((2000, 2000, 3), np.uint8)
        if layout == "strided":
            big = np.zeros((2000, 4000, 3), np.uint8)[:, ::2]
            assert not big.flags.c_contiguous
        tracemalloc.start()
        try:
            (row,) = small.classify(big)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert row["error"] == "image too large: 2000x2000 = 4000000 pixels, limit is 10000"
    assert peak < 1 << 20, peak  # the array is 12 MB: it was not copied


def test_a_large_file_that_is_no_image_is_refused_without_reading_it(model: Model, tmp_path: Path) -> None:
    """Issue 20: a 300 MB non-image file was read whole before 'not an image'."""
    big = tmp_path / "big.jpg"
    with open(big, "wb") as handle:
        handle.write(b"not an image at all\n")
        handle.truncate(300 << 20)  # sparse: nothing to read but zeros
    tracemalloc.start()
    try:
        (row,) = model.classify(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert row["error"].startswith("not an image: the data is in none of the accepted formats")
    assert peak < 4 << 20, peak


def test_bytes_over_the_byte_limit_are_refused_before_a_copy() -> None:
    limits = InputLimits(max_pixels=1000)
    view = memoryview(bytearray(limits.max_bytes + 1))
    with pytest.raises(DecodeError, match="file too large") as info:
        check_input(view, limits)
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("images", [None, {}, {"a": b""}, 3, 2.5, {b"x"}, object()],
                         ids=["None", "empty_dict", "dict", "int", "float", "set", "object"])
def test_wrong_argument_types_raise_type_error(model: Model, images: object) -> None:
    with pytest.raises(TypeError, match="classify\\(\\) takes an image or a list of images"):
        model.classify(images)


def test_wrong_items_names_and_top_k_raise(model: Model) -> None:
    with pytest.raises(TypeError, match="item 1: cannot classify a NoneType"):
        model.classify([b"", None])
    with pytest.raises(TypeError, match="names must be a sequence of strings"):
        model.classify([b""], names="a")
    with pytest.raises(TypeError, match="names must be strings"):
        model.classify([b""], names=[1])
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        model.classify([b""], top_k=-1)
    with pytest.raises(TypeError, match="top_k must be an integer"):
        model.classify([b""], top_k="3")
    assert model.classify([]) == []  # an empty list is a list of no images
    assert model.classify(iter([b""]))[0]["error"] == "empty file (0 bytes)"  # any iterable
