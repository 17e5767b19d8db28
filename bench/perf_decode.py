"""Peak memory and time of decode + resize per pathological image shape, before and after the
issue-10 hardening of ``osr/images.py``.

    python bench/perf_decode.py                      # all cases, image size 32 (the bundled model)
    python bench/perf_decode.py --image-size 224 --cases photo_jpeg strip_1x65535_png

Each image is decoded in a fresh interpreter (``--child``) that imports one implementation of
``osr.images`` and runs the serving path, ``resize_for_model(decode_to_pil(data), size)``.
"before" is ``osr/images.py`` at ``--before-rev`` (the last commit before the hardening), copied
out of git into a temporary module; "after" is the working tree. The child caps its own address
space at ``--budget-mb`` above what it holds after the imports, so a case that would need tens of
GB ends as MemoryError instead of taking the machine down. Memory is the growth of the child's
peak resident set (VmHWM in /proc/self/status; ru_maxrss cannot be used in a child because Linux
carries the parent's peak across exec) over its baseline after the imports and reading the file.
tracemalloc would see numpy's buffers but not Pillow's C buffers, so the peak RSS is the number.
Each case runs ``--repeat`` times per implementation, before and after alternating; the result
keeps the largest peak and the shortest time (the machine is shared: the shortest time is the one
least disturbed by other work). Writes bench/results/perf_decode.json.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from perf_common import ROOT, save

BEFORE_REV = "ef7d461"  # osr/images.py before the hardening (commit 97321f7 changed it)
MAX_PIXELS = 40_000_000  # DEFAULT_MAX_PIXELS, the --max-pixels default of osr-serve and osr-score


# -- test images -----------------------------------------------------------------------------------

def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_strip(width: int, height: int) -> bytes:
    """An RGB PNG of any shape from a repeated row pattern, compressed as it is produced (an 855-byte
    file can hold 1 x 400,000 pixels, the issue's example)."""
    row = b"\x00" + bytes((7 * i) % 256 for i in range(3 * width))
    rows_per_chunk = max(1, (1 << 22) // len(row))
    compressor = zlib.compressobj(9)
    parts = []
    for start in range(0, height, rows_per_chunk):
        parts.append(compressor.compress(row * min(rows_per_chunk, height - start)))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


def _gradient(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth picture with a little noise: compresses like a photo, not like noise or a flat area."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    noise = np.random.default_rng(seed).integers(0, 12, (height, width, 1), dtype=np.uint8)
    rgb = np.stack([x * 255 / max(1, width - 1), y * 255 / max(1, height - 1),
                    (x + y) * 127 / max(1, width + height - 2)], axis=2)
    return (rgb.astype(np.uint8) + noise).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _frames(count: int, size: int = 256) -> list[Image.Image]:
    base = Image.fromarray(_gradient(size, size))
    return [base.rotate(i * 360 / count) for i in range(count)]


def _palette_square(side: int) -> bytes:
    """A palette PNG (256 colours, a per-entry alpha in tRNS), max-pixels sized: Pillow expands it to RGBA."""
    indices = (np.add.outer(np.arange(side), np.arange(side)) % 256).astype(np.uint8)
    image = Image.fromarray(indices, "L").convert("P")
    image.putpalette(bytes(range(256)) * 3)
    return _encode(image, "PNG", transparency=bytes(range(256)), optimize=False)


def _rotated(image: Image.Image, fmt: str, **kwargs) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone photo held upright
    return _encode(image, fmt, exif=exif.tobytes(), **kwargs)


def _scan_bomb(side: int, repeats: int) -> bytes:
    """A flat progressive JPEG whose last scan (31 bytes) is repeated: libjpeg runs each over the whole image."""
    data = _encode(Image.new("RGB", (side, side), (90, 120, 200)), "JPEG", quality=90, progressive=True)
    last_scan, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last_scan:end] * repeats + data[end:]


CASES: dict[str, Callable[[], bytes]] = {
    "photo_jpeg_640x480": lambda: _encode(Image.fromarray(_gradient(640, 480)), "JPEG", quality=90),
    "phone_jpeg_4000x3000_exif_rotated": lambda: _rotated(Image.fromarray(_gradient(4000, 3000)), "JPEG", quality=90),
    "progressive_jpeg_4000x3000": lambda: _encode(Image.fromarray(_gradient(4000, 3000)), "JPEG", quality=90,
                                                  progressive=True),
    "jpeg_scan_bomb_4000x4000_1000_scans": lambda: _scan_bomb(4000, 1000),
    "large_jpeg_6324x6324": lambda: _encode(Image.fromarray(_gradient(6324, 6324)), "JPEG", quality=90),
    "png16_grey_4000x3000": lambda: _encode(
        Image.fromarray((_gradient(4000, 3000)[:, :, 0].astype(np.uint16) * 257)), "PNG"),
    "rgba_png_6324x6324": lambda: _encode(Image.fromarray(np.dstack(
        [_gradient(6324, 6324), np.full((6324, 6324), 128, np.uint8)])), "PNG", compress_level=1),
    "rgba_png_6324x6324_exif_rotated": lambda: _rotated(Image.fromarray(np.dstack(
        [_gradient(6324, 6324), np.full((6324, 6324), 128, np.uint8)])), "PNG", compress_level=1),
    "palette_alpha_png_6324x6324": lambda: _palette_square(6324),
    "rgb_png_6324x6324": lambda: png_strip(6324, 6324),
    "strip_png_1x400000": lambda: png_strip(1, 400_000),
    "strip_png_400000x1": lambda: png_strip(400_000, 1),
    "strip_png_1x65535": lambda: png_strip(1, 65_535),
    "strip_png_65535x1": lambda: png_strip(65_535, 1),
    "strip_png_1x4000000": lambda: png_strip(1, 4_000_000),
    "strip_png_1x40000000": lambda: png_strip(1, 40_000_000),
    "strip_png_40000000x1": lambda: png_strip(40_000_000, 1),
    "strip_png_600x65535": lambda: png_strip(600, 65_535),
    "gif_1000_frames_256": lambda: _encode(_frames(1)[0], "GIF", save_all=True, append_images=_frames(999)),
    "apng_300_frames_256": lambda: _encode(_frames(1)[0], "PNG", save_all=True, append_images=_frames(299)),
    "tiff_1000_pages_256": lambda: _encode(_frames(1)[0], "TIFF", save_all=True, append_images=_frames(999)),
}


# -- the measuring child ---------------------------------------------------------------------------

def child(module_path: Path, image_path: Path, image_size: int, budget_mb: int) -> dict:
    import importlib.util
    import resource
    import time

    spec = importlib.util.spec_from_file_location("osr_images_under_test", module_path)
    images = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(images)
    data = image_path.read_bytes()
    with open("/proc/self/status") as status:
        vm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm_kb * 1024 + (budget_mb << 20), resource.RLIM_INFINITY))

    def peak_mb() -> float:  # VmHWM: ru_maxrss would start at the parent's peak (Linux keeps it across exec)
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024

    base = peak_mb()
    start = time.perf_counter()
    result: dict = {"baseline_rss_mb": round(base, 1)}
    try:
        decoded = images.decode_to_pil(data, MAX_PIXELS)
        result.update(decoded_size=list(decoded.size), decode_peak_mb=round(peak_mb() - base, 1),
                      decode_seconds=round(time.perf_counter() - start, 3))
        out = images.resize_for_model(decoded, image_size)
        result.update(outcome="ok", output_shape=list(out.shape))
    except images.DecodeError as exc:
        result.update(outcome="refused", reason=exc.reason, message=str(exc))
    except MemoryError:
        result.update(outcome=f"MemoryError (needs more than the {budget_mb} MB budget)")
    result.update(peak_mb=round(peak_mb() - base, 1), seconds=round(time.perf_counter() - start, 3))
    return result


def measure(module_path: Path, image_path: Path, image_size: int, budget_mb: int, timeout_s: float) -> dict:
    command = [sys.executable, __file__, "--child", str(module_path), str(image_path),
               "--image-size", str(image_size), "--budget-mb", str(budget_mb)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"outcome": f"timeout after {timeout_s:.0f} s"}
    if done.returncode != 0:
        return {"outcome": f"crashed (exit {done.returncode})", "stderr": done.stderr[-400:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before-rev", default=BEFORE_REV)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--budget-mb", type=int, default=4096, help="address space a child may add (default 4096)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per child (default 120)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="children per case and implementation, alternating; the table shows the largest "
                             "peak and the shortest time (default 3)")
    parser.add_argument("--cases", nargs="*", choices=sorted(CASES), default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--table", type=Path, default=None, metavar="JSON",
                        help="print a results file as the markdown table of docs/security.md, and exit")
    parser.add_argument("--child", nargs=2, type=Path, metavar=("MODULE", "IMAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.image_size, args.budget_mb)))
        return
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return

    with tempfile.TemporaryDirectory(prefix="perf_decode_") as temp:
        temp_dir = Path(temp)
        before = temp_dir / "images_before.py"
        before.write_text(subprocess.run(["git", "show", f"{args.before_rev}:osr/images.py"], cwd=ROOT,
                                         check=True, capture_output=True, text=True).stdout)
        implementations = {"before": before, "after": ROOT / "osr" / "images.py"}
        rows = []
        for name in args.cases or list(CASES):
            data = CASES[name]()
            image_path = temp_dir / name
            image_path.write_bytes(data)
            with Image.open(io.BytesIO(data)) as header:
                info = {"format": header.format, "mode": header.mode, "width": header.width,
                        "height": header.height, "frames": getattr(header, "n_frames", 1)}
            row = {"case": name, "file_bytes": len(data), **info, "pixels": info["width"] * info["height"]}
            runs: dict[str, list[dict]] = {label: [] for label in implementations}
            for _ in range(args.repeat):  # before and after alternate, so load changes hit both
                for label, module in implementations.items():
                    if runs[label] and _settled(runs[label][-1]):
                        continue
                    runs[label].append(measure(module, image_path, args.image_size, args.budget_mb, args.timeout))
            for label, results in runs.items():
                row[label] = _combine(results)
            rows.append(row)
            print(_line(row), flush=True)
            image_path.unlink()
    save("perf_decode", {"image_size": args.image_size, "max_pixels": MAX_PIXELS, "before_rev": args.before_rev,
                         "budget_mb": args.budget_mb, "repeat": args.repeat, "cases": rows}, args.out)


def _settled(result: dict) -> bool:
    """Refusals, failures and runs over 10 s are not repeated (they do not change, or cost too much)."""
    return result.get("outcome") != "ok" or result.get("seconds", 0) > 10


def _combine(results: list[dict]) -> dict:
    """The first run's record with the largest peak and the shortest time over all runs."""
    combined = dict(results[0])
    ok = [result for result in results if result.get("outcome") == "ok"]
    if ok:
        combined["peak_mb"] = max(result["peak_mb"] for result in ok)
        combined["seconds"] = min(result["seconds"] for result in ok)
        combined["seconds_all"] = [result["seconds"] for result in ok]
    combined["runs"] = len(results)
    return combined


def _cell(result: dict) -> str:
    if result.get("outcome") == "ok":
        return f"{result['peak_mb']:.0f} MB, {result['seconds']:.2f} s"
    if result.get("outcome") == "refused":
        return f"refused ({result['reason']}), {result['peak_mb']:.0f} MB, {result['seconds']:.3f} s"
    return result.get("outcome", "?").replace("needs more than the ", "> ").replace(" budget", "")


def markdown_table(results: dict) -> str:
    lines = ["| Image | File | Pixels | Before: peak, time | After: peak, time |", "|---|---:|---:|---|---|"]
    for row in results["cases"]:
        lines.append(f"| {row['case']} ({row['format']} {row['mode']}) | {_size(row['file_bytes'])} | "
                     f"{row['pixels']:,} | {_cell(row['before'])} | {_cell(row['after'])} |")
    return "\n".join(lines)


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.1f} KB" if count >= 1e3 else f"{count} B"


def _line(row: dict) -> str:
    return (f"{row['case']:36s} {row['file_bytes']:>10,d} B {row['pixels']:>12,d} px | "
            f"before {_cell(row['before']):44s} | after {_cell(row['after'])}")


if __name__ == "__main__":
    main()
