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
from osr.serve.score_cli import FDR_COLUMN, iter_input_paths, main, remove_torn_last_line

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
    with open(out, "a") as handle:  # a write torn by the kill
        handle.write('{"path": "half-writ' if suffix == ".jsonl" else f"{all_paths[3]},ok,,")

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
