"""osr-score (osr.serve.score_cli) and osr.serve.fdr."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osr.serve.fdr import benjamini_hochberg, bh_adjusted_p_values
from osr.serve.predictor import Predictor
from osr.serve.score_cli import iter_input_paths, main
from osr.serve.score_output import FDR_COLUMN, remove_torn_last_line

# -- Benjamini-Hochberg ----------------------------------------------------------------------------


def test_bh_hand_example_step_up() -> None:
    # sorted: 0.001 <= 1/4*0.05 yes; 0.03 > 2/4*0.05 no; 0.032 <= 3/4*0.05 yes; 0.9 > 0.05 no.
    # Step-up rejects the three smallest, including 0.03 that failed its own threshold.
    p = np.array([0.9, 0.032, 0.001, 0.03])
    assert benjamini_hochberg(p, 0.05).tolist() == [False, True, True, True]
    np.testing.assert_allclose(bh_adjusted_p_values(p), [0.9, 0.032 * 4 / 3, 0.004, 0.032 * 4 / 3])
    assert benjamini_hochberg(p, 0.04).tolist() == [False, False, True, False]
    assert bh_adjusted_p_values(np.array([0.5, 0.9]))[1] == 0.9
    assert bh_adjusted_p_values(np.array([0.9] * 3)).max() == 0.9


def _reference_bh(p: np.ndarray, q: float) -> np.ndarray:
    """The definition, written out: reject the k smallest for the largest k with p_(k) <= k q / m."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    k = max((rank for rank in range(1, m + 1) if p[order[rank - 1]] <= rank * q / m), default=0)
    rejected = np.zeros(m, bool)
    rejected[order[:k]] = True
    return rejected


@pytest.mark.parametrize("seed", range(5))
def test_bh_matches_the_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(size=200), rng.uniform(0, 0.002, size=rng.integers(0, 40))])
    rng.shuffle(p)
    for q in (0.01, 0.1, 0.3):
        np.testing.assert_array_equal(benjamini_hochberg(p, q), _reference_bh(p, q))


def test_bh_edge_cases() -> None:
    assert benjamini_hochberg(np.array([]), 0.1).shape == (0,)
    with pytest.raises(ValueError):
        benjamini_hochberg(np.array([0.5]), 1.5)
    with pytest.raises(ValueError):
        benjamini_hochberg(np.array([np.nan]), 0.1)


# -- CLI -------------------------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Nested folder: six decodable images of assorted sizes and formats, one broken .jpg, one .txt."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for index, (sub, size, fmt) in enumerate([
        ("a", (32, 32), "png"), ("a", (50, 40), "jpg"), ("a/deep", (20, 64), "png"),
        ("b", (33, 33), "bmp"), ("b", (90, 30), "jpeg"), ("b", (8, 8), "gif"),
    ]):
        (root / sub).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / sub / f"img{index}.{fmt}")
    (root / "b" / "broken.jpg").write_bytes(b"not really a jpeg")
    (root / "b" / "notes.txt").write_text("ignored: not an image extension")
    return root


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, newline="") as handle:
            return list(csv.DictReader(handle))
    return [json.loads(line) for line in path.read_text().splitlines()]


def _score(repository: Path, *args: str) -> int:
    return main([*args, "--model-repository", str(repository), "--workers", "2", "--threads", "1"])


def test_folder_to_jsonl_with_a_bad_file(tiny_model_repository: Path, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    assert _score(tiny_model_repository, str(image_folder), "--out", str(out), "--batch-size", "4") == 3
    rows = _read_rows(out)
    expected_paths = list(iter_input_paths([str(image_folder)]))
    assert [row["path"] for row in rows] == expected_paths  # order kept, .txt skipped
    assert len(rows) == 7
    [broken] = [row for row in rows if row["path"].endswith("broken.jpg")]
    assert broken["status"] == "error" and "not an image" in broken["error"]
    assert all(row["status"] == "ok" for row in rows if row is not broken)

    # the CLI gives the same rows as the predictor on the same bytes
    predictor = Predictor.from_repository(tiny_model_repository)
    direct = predictor.classify_bytes([(path, Path(path).read_bytes()) for path in expected_paths], top_k=5)
    for row, reference in zip(rows, direct):
        assert row.keys() == reference.keys()
        assert row["class_index"] == reference["class_index"] and row["status"] == reference["status"]
        if row["status"] == "ok":
            assert row["score"] == pytest.approx(reference["score"], rel=1e-5, abs=1e-7)
            assert row["p_value"] == pytest.approx(reference["p_value"])


def test_csv_output_and_exit_code_zero(tiny_model_repository: Path, image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "b" / "broken.jpg").unlink()
    out_csv, out_jsonl = tmp_path / "r.csv", tmp_path / "r.jsonl"
    assert _score(tiny_model_repository, str(image_folder), "--out", str(out_csv), "--top-k", "2") == 0
    assert _score(tiny_model_repository, str(image_folder), "--out", str(out_jsonl), "--top-k", "2") == 0
    csv_rows, json_rows = _read_rows(out_csv), _read_rows(out_jsonl)
    assert len(csv_rows) == len(json_rows) == 6
    for from_csv, from_json in zip(csv_rows, json_rows):
        assert from_csv["path"] == from_json["path"]
        assert int(from_csv["class_index"]) == from_json["class_index"]
        assert float(from_csv["score"]) == pytest.approx(from_json["score"])
        assert from_csv["unknown"] == str(from_json["unknown"])
        assert json.loads(from_csv["top_k"]) == from_json["top_k"]
        assert len(from_json["top_k"]) == 2


def test_globs_list_files_and_missing_listed_paths(
    tiny_model_repository: Path, image_folder: Path, tmp_path: Path
) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(f"{image_folder / 'a' / 'img0.png'}\n\n{image_folder / 'a' / 'deep'}\n{tmp_path / 'gone.png'}\n")
    out = tmp_path / "r.jsonl"
    pattern = str(image_folder / "b" / "*.jpeg")
    assert _score(tiny_model_repository, f"@{listing}", pattern, "--out", str(out)) == 3
    rows = _read_rows(out)
    assert [Path(row["path"]).name for row in rows] == ["img0.png", "img2.png", "gone.png", "img4.jpeg"]
    assert rows[2]["status"] == "error" and "cannot read" in rows[2]["error"]


def test_usage_errors_exit_2(tiny_model_repository: Path, image_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.jsonl"
    for args in (
        [str(tmp_path / "missing-folder"), "--out", str(out)],
        [str(image_folder), "--out", str(tmp_path / "r.txt")],
        [str(image_folder), "--out", str(out), "--batch-size", "0"],
        [str(image_folder), "--out", str(out), "--fdr", "2"],
        [f"@{tmp_path / 'no-list.txt'}", "--out", str(out)],
    ):
        with pytest.raises(SystemExit) as info:
            _score(tiny_model_repository, *args)
        assert info.value.code == 2
    out.write_text("")
    with pytest.raises(SystemExit) as info:  # never clobber a previous result silently
        _score(tiny_model_repository, str(image_folder), "--out", str(out))
    assert info.value.code == 2
    assert "--resume" in capsys.readouterr().err
    empty_repository = tmp_path / "empty-repository"
    empty_repository.mkdir()
    assert _score(empty_repository, str(image_folder), "--out", str(tmp_path / "x.jsonl")) == 2


def test_help_documents_exit_codes(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 all files scored; 3 some rows" in text and "2 usage error" in text


def test_fdr_column(tiny_model_repository: Path, image_folder: Path, tmp_path: Path) -> None:
    for name in ("r.jsonl", "r.csv"):
        out = tmp_path / name
        assert _score(tiny_model_repository, str(image_folder), "--out", str(out), "--fdr", "0.5") == 3
        rows = _read_rows(out)
        ok = [row for row in rows if row["status"] == "ok"]
        flags = benjamini_hochberg(np.array([float(row["p_value"]) for row in ok]), 0.5)
        if out.suffix == ".csv":
            assert [row[FDR_COLUMN] for row in ok] == [str(bool(flag)) for flag in flags]
            assert [row[FDR_COLUMN] for row in rows if row["status"] == "error"] == [""]
        else:
            assert [row[FDR_COLUMN] for row in ok] == flags.tolist()
            assert [row[FDR_COLUMN] for row in rows if row["status"] == "error"] == [None]
        assert len(rows) == 7


def test_torn_last_line_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"path": "a"}\n{"path": "b"}\n{"path": "c", "sta')
    assert remove_torn_last_line(path)
    assert path.read_bytes() == b'{"path": "a"}\n{"path": "b"}\n'
    assert not remove_torn_last_line(path)
    path.write_bytes(b'{"path": "only-torn')
    assert remove_torn_last_line(path) and path.read_bytes() == b""


def _open_fifo_for_writing(fifo: Path, process: subprocess.Popen, timeout_s: float = 60.0) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO until the CLI opens the list for reading
            if exc.errno != errno.ENXIO or process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"osr-score never read its list (exit {process.poll()})") from exc
            time.sleep(0.05)


def _wait_for_lines(path: Path, count: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {count} lines")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_after_kill(tiny_model_repository: Path, image_folder: Path, tmp_path: Path, suffix: str) -> None:
    """Kill osr-score after it flushed the first rows, tear the last line, resume: nothing lost or doubled."""
    all_paths = list(iter_input_paths([str(image_folder)]))
    out = tmp_path / f"results{suffix}"
    fifo = tmp_path / "paths.fifo"
    os.mkfifo(fifo)
    process = subprocess.Popen(
        [sys.executable, "-m", "osr.serve.score_cli", f"@{fifo}", "--out", str(out), "--batch-size", "1",
         "--model-repository", str(tiny_model_repository), "--threads", "1"],
        stderr=subprocess.PIPE,
    )
    try:
        writer = _open_fifo_for_writing(fifo, process)
        os.write(writer, "".join(path + "\n" for path in all_paths[:3]).encode())
        header_lines = 1 if suffix == ".csv" else 0
        _wait_for_lines(out, 3 + header_lines)  # the stream is still open: the CLI is mid-run
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        os.close(writer)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    with open(out, "a") as handle:  # a write torn by the kill (every CSV value is quoted)
        handle.write('{"path": "half-writ' if suffix == ".jsonl" else f'"{all_paths[3]}","ok","",')

    assert _score(tiny_model_repository, str(image_folder), "--out", str(out), "--resume", "--batch-size", "2") == 3
    rows = _read_rows(out)
    assert sorted(row["path"] for row in rows) == sorted(all_paths)  # each exactly once
    assert [row["path"] for row in rows[:3]] == all_paths[:3]
    # a second resume has nothing left to do and keeps the file as it is
    before = out.read_bytes()
    assert _score(tiny_model_repository, str(image_folder), "--out", str(out), "--resume") == 3
    assert out.read_bytes() == before


def test_pipeline_stops_cleanly_when_the_backend_fails(tiny_model_repository: Path, image_folder: Path) -> None:
    from osr.serve.score_cli import score_paths

    predictor = Predictor.from_repository(tiny_model_repository)

    def broken_backend(batch: np.ndarray) -> dict:
        raise RuntimeError("backend down")

    predictor.backend.infer = broken_backend
    endless = (str(path) for path in iter(lambda: image_folder / "a" / "img0.png", None))
    written: list = []
    with pytest.raises(RuntimeError, match="backend down"):
        score_paths(predictor, endless, written.extend, batch_size=2, workers=2)
    assert written == []


# -- hardening (issue 10) --------------------------------------------------------------------------

def _cli(repository: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "osr.serve.score_cli", *args, "--model-repository", str(repository),
            "--threads", "1", "--workers", "2"]


def _png_bytes(seed: int = 0, size: tuple[int, int] = (12, 10)) -> bytes:
    import io

    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("osr-score: error:"), lines
    return lines[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and Unix sockets")
def test_fifo_socket_and_device_become_error_rows_at_once(tiny_model_repository: Path, tmp_path: Path) -> None:
    """Issue 10: a FIFO named *.jpg blocked osr-score forever and held back the good rows of its batch."""
    import socket

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_good.png").write_bytes(_png_bytes(0))
    os.mkfifo(folder / "b_pipe.jpg")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "c_socket.png"))
    (folder / "d_good.png").write_bytes(_png_bytes(1))
    listing = tmp_path / "list.txt"
    listing.write_text(f"{folder}\n{os.devnull}\n")
    out = tmp_path / "r.jsonl"
    try:
        done = subprocess.run(_cli(tiny_model_repository, f"@{listing}", "--out", str(out), "--batch-size", "8"),
                              capture_output=True, text=True, timeout=60)
    finally:
        server.close()
    assert done.returncode == 3, done.stderr
    rows = {Path(row["path"]).name: row for row in _read_rows(out)}
    assert rows["a_good.png"]["status"] == rows["d_good.png"]["status"] == "ok"
    assert rows["b_pipe.jpg"]["error"] == "not a regular file: a FIFO (named pipe)"
    assert rows["c_socket.png"]["error"] == "not a regular file: a socket"
    assert rows[Path(os.devnull).name]["error"] == "not a regular file: a character device"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_sigint_stops_within_two_seconds_and_resume_finishes_without_duplicates(
    tiny_model_repository: Path, tmp_path: Path
) -> None:
    """Issue 10: Ctrl-C did not end osr-score. Now: exit 130 at once, whole rows only, resumable."""
    folder = tmp_path / "in"
    folder.mkdir()
    data = _png_bytes(2)
    paths = []
    for index in range(60):
        paths.append(folder / f"{index:03d}.png")
        paths[-1].write_bytes(data)
    os.mkfifo(folder / "030_pipe.jpg")  # the old code blocked on it and then hung at exit
    paths.insert(31, folder / "030_pipe.jpg")
    out = tmp_path / "r.jsonl"
    fifo = tmp_path / "paths.fifo"
    os.mkfifo(fifo)
    process = subprocess.Popen(_cli(tiny_model_repository, f"@{fifo}", "--out", str(out), "--batch-size", "4"),
                               stderr=subprocess.PIPE, text=True)
    try:
        writer = _open_fifo_for_writing(fifo, process)
        os.write(writer, "".join(f"{path}\n" for path in paths[:40]).encode())
        _wait_for_lines(out, 36)  # mid-run: the path stream stays open
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        finally:
            os.close(writer)
        elapsed = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read()
    assert process.returncode == 130, stderr
    # the stop itself polls every 0.1 s; the margin is for interpreter exit on a loaded CI runner
    assert elapsed < 3.0, f"took {elapsed:.2f} s to stop"
    assert "Traceback" not in stderr and "--resume" in stderr
    assert out.read_bytes().endswith(b"\n")  # flushed, whole rows only
    assert [row["path"] for row in _read_rows(out)] == [str(path) for path in paths[:len(_read_rows(out))]]

    listing = tmp_path / "all.txt"
    listing.write_text("".join(f"{path}\n" for path in paths))
    done = subprocess.run(_cli(tiny_model_repository, f"@{listing}", "--out", str(out), "--resume"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr  # the FIFO is an error row
    rows = _read_rows(out)
    assert sorted(row["path"] for row in rows) == sorted(str(path) for path in paths)


def test_sigint_handler_is_restored_after_main(tiny_model_repository: Path, image_folder: Path, tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGINT)
    _score(tiny_model_repository, str(image_folder), "--out", str(tmp_path / "r.jsonl"))
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("mode", ["", "--resume", "--overwrite"])
def test_out_that_is_a_directory_or_unwritable_is_a_one_line_usage_error(
    tiny_model_repository: Path, image_folder: Path, tmp_path: Path, capsys, mode: str
) -> None:
    """Issue 10: a directory or unwritable --out gave a traceback."""
    folder_out = tmp_path / "r.jsonl"
    folder_out.mkdir()
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    cases = [(folder_out, "is a directory"), (a_file / "r.jsonl", "not a folder")]
    if hasattr(os, "mkfifo"):  # an existing FIFO would block the open for writing
        os.mkfifo(tmp_path / "fifo.csv")
        cases.append((tmp_path / "fifo.csv", "not a regular file"))
    for out, words in cases:
        code = _score(tiny_model_repository, str(image_folder), "--out", str(out), *([mode] if mode else []))
        assert code == 2, out
        assert words in _one_line_error(capsys.readouterr().err)


def test_csv_resume_after_a_kill_inside_a_row_whose_path_holds_a_newline(
    tiny_model_repository: Path, tmp_path: Path
) -> None:
    """Issue 10: after a kill inside such a row, --resume left a merged row (the cut was at the last \\n)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, seed in (("a\nb.png", 3), ('c"\r\n.png', 4), ("d.png", 5)):
        (folder / name).write_bytes(_png_bytes(seed))
    out = tmp_path / "r.csv"
    assert _score(tiny_model_repository, str(folder), "--out", str(out), "--batch-size", "1") == 0
    complete = out.read_bytes()
    reference = _read_rows(out)
    assert [Path(row["path"]).name for row in reference] == ["a\nb.png", 'c"\r\n.png', "d.png"]
    # killed just after the newline inside the first row's path, and inside the second row's path
    for cut in (complete.index(b"a\nb.png") + 2, complete.index(b'c""\r\n.png') + 5):
        out.write_bytes(complete[:cut])
        assert _score(tiny_model_repository, str(folder), "--out", str(out), "--resume", "--batch-size", "1") == 0
        rows = _read_rows(out)
        assert [row["path"] for row in rows] == [row["path"] for row in reference], cut
        assert all(row["status"] == "ok" and json.loads(row["top_k"]) for row in rows)


def test_a_corrupt_csv_record_before_the_end_is_not_truncated(
    tiny_model_repository: Path, image_folder: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "r.csv"
    assert _score(tiny_model_repository, str(image_folder), "--out", str(out)) == 3
    capsys.readouterr()
    lines = out.read_bytes().split(b"\n")
    lines[2] = lines[2][: len(lines[2]) // 2]  # a damaged record in the middle, not a torn tail
    out.write_bytes(b"\n".join(lines))
    before = out.read_bytes()
    assert _score(tiny_model_repository, str(image_folder), "--out", str(out), "--resume") == 2
    assert "cannot resume" in _one_line_error(capsys.readouterr().err)
    assert out.read_bytes() == before


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems refuse names that are not UTF-8")
@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_non_utf8_file_names_are_written_losslessly_as_valid_utf8(
    tiny_model_repository: Path, tmp_path: Path, suffix: str
) -> None:
    """Issue 10: non-UTF-8 names made the JSONL invalid UTF-8."""
    import base64

    folder = tmp_path / "in"
    folder.mkdir()
    raw_name = b"caf\xe9-\xff.png"  # Latin-1 bytes: not UTF-8
    (folder / os.fsdecode(raw_name)).write_bytes(_png_bytes(6))
    (folder / "plain.png").write_bytes(_png_bytes(7))
    out = tmp_path / f"r{suffix}"
    assert _score(tiny_model_repository, str(folder), "--out", str(out)) == 0
    text = out.read_bytes().decode("utf-8")  # strict: raises on invalid UTF-8
    rows = _read_rows(out)
    odd, plain = rows
    assert odd["path"].endswith("caf\\xe9-\\xff.png") and "\\xe9" in text
    assert base64.b64decode(odd["path_bytes_b64"]) == os.fsencode(folder) + b"/" + raw_name
    assert not plain.get("path_bytes_b64")  # only when needed
    if suffix == ".jsonl":
        assert "path_bytes_b64" not in plain
    # resume recognises the odd name as done
    assert _score(tiny_model_repository, str(folder), "--out", str(out), "--resume") == 0
    assert out.read_bytes().decode("utf-8") == text


def test_broken_model_exits_2_with_one_line(tiny_model_repository: Path, image_folder: Path, tmp_path: Path,
                                            capsys) -> None:
    """Issue 10: a model file that is not ONNX (its hash matching the manifest) exited 1 with a traceback."""
    import shutil

    from osr.export.manifest import sha256_file

    repository = tmp_path / "repository"
    shutil.copytree(tiny_model_repository, repository)
    [manifest_path] = repository.glob("*/*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    model = manifest_path.parent / manifest["model_file"]
    model.write_text("this is not an ONNX graph\n")
    manifest["sha256"] = sha256_file(model)
    manifest_path.write_text(json.dumps(manifest))
    out = tmp_path / "r.jsonl"
    assert _score(repository, str(image_folder), "--out", str(out)) == 2
    assert "cannot load the model" in _one_line_error(capsys.readouterr().err)
    assert not out.exists()


def test_next_batch_takes_what_is_queued_up_to_the_batch_size() -> None:
    import queue
    import threading

    from osr.serve.score_cli import _END, _next_batch

    pending: queue.Queue = queue.Queue()
    for item in ("a", "b", "c"):
        pending.put(item)
    stop = threading.Event()
    assert _next_batch(pending, 2, stop) == (["a", "b"], False)
    assert _next_batch(pending, 2, stop) == (["c"], False)  # cut when nothing more is queued
    pending.put("d")
    pending.put(_END)
    assert _next_batch(pending, 5, stop) == (["d"], True)
    stop.set()
    started = time.monotonic()
    assert _next_batch(pending, 5, stop) == ([], False)  # an empty queue does not block a stop
    assert time.monotonic() - started < 1
    pending.put(RuntimeError("path stream failed"))
    with pytest.raises(RuntimeError, match="path stream"):
        _next_batch(pending, 5, threading.Event())


def test_any_error_while_loading_the_model_is_one_line_and_exit_2(
    image_folder: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Whatever a backend library raises while loading (not only the preflight's errors) is a
    usage error: one line, exit 2, no --out written."""
    def broken(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Load model failed\nsecond line of detail")

    monkeypatch.setattr(Predictor, "from_repository", broken)
    out = tmp_path / "r.jsonl"
    assert main([str(image_folder), "--out", str(out)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "cannot load the model: RuntimeError: [ONNXRuntimeError]" in line and "second line of detail" in line
    assert not out.exists()
