"""osr-score: classify many image files with an exported model; one result row per file.

Streams: paths are produced lazily (folders walked, globs expanded, list files read line by
line), decoding runs in a thread pool ahead of the model, and rows are written and flushed after
every batch, so memory stays flat and a killed run loses at most one batch (--resume).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import csv
import glob
import json
import os
import queue
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from osr.atomic import atomic_path
from osr.export.manifest import ManifestError
from osr.inputs import error_message
from osr.serve.decode import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from osr.serve.fdr import benjamini_hochberg
from osr.serve.monitor import format_summary, summarize_rows
from osr.serve.predictor import MODEL_REPOSITORY_ENV, Predictor, PredictorError
from osr.serve.results import ROW_FIELDS, error_row

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SOME_FAILED = 3
EXIT_ALARM = 4  # --summary raised an ALARM (before 3: the failed rows are in --out and its summary line)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

FDR_COLUMN = "bh_unknown"
PATH_BYTES_FIELD = "path_bytes_b64"  # the exact bytes of a path that is not valid UTF-8
CSV_FIELDS = (*ROW_FIELDS, PATH_BYTES_FIELD)
_GLOB_CHARS = frozenset("*?[")
_ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}  # file names need not be valid UTF-8
_POLL_S = 0.1  # how often waits look at the stop flag (Ctrl-C is honoured within this, plus one batch)


class UsageError(Exception):
    """A problem with the arguments or the output file: exit 2 with this one-line message."""


DESCRIPTION = """\
Classify image files with an exported osr model; write one row per file (JSONL or CSV, by the
extension of --out): path, status, error, class_index (-1 = unknown), class_name, score, p_value,
unknown, top_k.

INPUT is a file, a folder (searched recursively for image extensions), a glob ('shots/**/*.jpg',
quote it), or @LIST, a text file with one file or folder per line (@- reads standard input;
relative paths are relative to the current folder). Files that do not decode become rows with
status=error. Paths are streamed, never collected: a path given twice is scored twice.
"""

EPILOG = f"""\
model: --model-repository defaults to ${MODEL_REPOSITORY_ENV}, else the model_repository/ folder
bundled at the root of the osr source tree; the only model there and its newest version are used
unless --model / --version say otherwise. With --triton-url the images go to a Triton server
(model name and version from the manifest), the manifest is still read locally. osr-score names
the model it uses (name, version, repository) before scoring and in its summary line, warns
when it falls back to the bundled model, and warns when an INPUT folder holds class-like
subfolders (images directly inside, two or more) whose names are not the model's classes.

--resume skips the paths already in --out (a torn last row from a killed run is removed first);
an --out with any line that osr-score did not write is refused (exit 2) and left as it is.
Without --resume or --overwrite an existing --out is not touched. Ctrl-C stops within about a
second: the rows of finished batches are in --out, whole, and --resume continues from there.
Only regular files are read: a FIFO, socket, device or folder given as a file becomes an error row.

Paths that are not valid UTF-8 (file names are bytes on Linux) are written with each undecodable
byte as \\xNN in "path" and, losslessly, base64 in the extra field {PATH_BYTES_FIELD} (JSONL: only
on those rows; CSV: a last column, empty otherwise), so the output is always valid UTF-8. CSV
values are all quoted, so any path (newlines included) survives a round trip.

--fdr Q: after scoring, a second pass over --out adds the column {FDR_COLUMN}: true for files
flagged unknown by Benjamini-Hochberg at false discovery rate Q over the p-values of all ok rows
in the file (the expected share of known images among the flagged ones is at most Q). Error
rows get an empty value. The file is rewritten atomically.

--summary: after scoring, print for all ok rows in --out the unknown rate against its 99 % band
for known-class images (BetaBinomial over the calibration draw) and a Kolmogorov-Smirnov test of
the accepted images' p-values, which are uniform when the images are of the known classes; an
ALARM on either says the batch is not what the threshold was calibrated on (docs/serving.md),
and osr-score exits 4.

exit status: 0 all files scored; 3 some rows in --out have status=error; 4 --summary raised an
ALARM (whether or not some rows failed); 2 usage error (bad arguments, missing input, output
exists or cannot be written or resumed, model repository that cannot be loaded); 1 the backend
failed (what was written so far is kept; rerun with --resume); 130 interrupted (Ctrl-C).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="osr-score", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="file, folder, glob or @list.txt")
    parser.add_argument("--out", required=True, type=Path, help="results.jsonl or results.csv")
    parser.add_argument("--model-repository", type=Path, default=None, metavar="DIR",
                        help="model repository written by osr-export (default: $OSR_MODEL_REPOSITORY, else the "
                             "bundled model_repository/)")
    parser.add_argument("--model", default=None, metavar="NAME",
                        help="model name (default: the only model in the repository)")
    parser.add_argument("--version", type=_positive_int, default=None, metavar="N",
                        help="model version (default: the newest)")
    parser.add_argument("--batch-size", type=_positive_int, default=64, metavar="N",
                        help="images per inference call (default %(default)s)")
    parser.add_argument("--top-k", type=_non_negative_int, default=5, metavar="K",
                        help="classes listed per image, 0 for none (default %(default)s)")
    parser.add_argument("--resume", action="store_true", help="skip paths already in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--fdr", type=_fdr_level, default=None, metavar="Q",
                        help=f"add column {FDR_COLUMN} (Benjamini-Hochberg at level Q; default: none, no such column)")
    parser.add_argument("--summary", action="store_true",
                        help="print the unknown-flag monitor's test of all ok rows in --out; exit 4 on an ALARM "
                             "(see below)")
    parser.add_argument("--triton-url", default=None, metavar="URL",
                        help="use a Triton server, e.g. localhost:8000 (default: none, onnxruntime in-process)")
    parser.add_argument("--triton-protocol", choices=("http", "grpc"), default="http",
                        help="protocol for --triton-url (default %(default)s)")
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="onnxruntime intra-op threads (default: onnxruntime's own, one per physical core)")
    parser.add_argument("--workers", type=_positive_int, default=min(4, os.cpu_count() or 1), metavar="N",
                        help="decoding threads (default: min(4, CPUs))")
    parser.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help="refuse images with more pixels (default %(default)s)")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _fdr_level(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


# -- inputs ----------------------------------------------------------------------------------------

def iter_input_paths(inputs: Iterable[str]) -> Iterator[str]:
    """Expand INPUT arguments lazily into file paths, in argument order."""
    for item in inputs:
        if item.startswith("@"):
            yield from _iter_list_file(item[1:])
        elif os.path.isdir(item):
            yield from _walk_images(item)
        elif not os.path.exists(item) and _GLOB_CHARS & set(item):
            for match in glob.iglob(item, recursive=True):
                if os.path.isdir(match):
                    yield from _walk_images(match)
                else:
                    yield match
        else:
            yield item


def _iter_list_file(name: str) -> Iterator[str]:
    stream = sys.stdin if name == "-" else open(name, **_ENCODING)
    try:
        for line in stream:
            path = line.rstrip("\r\n")
            if not path.strip():
                continue
            if os.path.isdir(path):
                yield from _walk_images(path)
            else:
                yield path
    finally:
        if stream is not sys.stdin:
            stream.close()


def _walk_images(folder: str) -> Iterator[str]:
    for root, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for filename in sorted(filenames):
            if os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS:
                yield os.path.join(root, filename)


def _check_inputs(inputs: list[str]) -> str | None:
    for item in inputs:
        if item.startswith("@"):
            if item != "@-" and (not os.path.exists(item[1:]) or os.path.isdir(item[1:])):
                return f"list file not found: {item[1:]}"
        elif not os.path.exists(item) and not _GLOB_CHARS & set(item):
            return f"input not found: {item}"
    return None


# -- output ----------------------------------------------------------------------------------------

def output_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise ValueError(f"--out must end in .jsonl, .ndjson or .csv, got {path.name!r}")


def remove_torn_last_line(path: Path) -> bool:
    """Truncate a file that does not end in a newline back to its last complete line."""
    with open(path, "rb+") as handle:
        end = handle.seek(0, os.SEEK_END)
        if end == 0:
            return False
        handle.seek(end - 1)
        if handle.read(1) == b"\n":
            return False
        position = end
        while position > 0:
            start = max(0, position - 65536)
            handle.seek(start)
            chunk = handle.read(position - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                handle.truncate(start + newline + 1)
                return True
            position = start
        handle.truncate(0)
        return True


def remove_torn_csv_record(path: Path) -> bool:
    """Truncate a CSV file after its last complete record; ValueError for damage before the end.

    A line-based cut is wrong for CSV: a quoted value may hold newlines, so a kill inside a path
    with a newline leaves a last line that ends in one. The csv module parses the records instead;
    the tail after the last record that ends in a newline with a full row of values is torn.
    """
    size = path.stat().st_size
    consumed = 0
    last_line = b""

    def lines() -> Iterator[str]:
        nonlocal consumed, last_line
        with open(path, "rb") as handle:
            for last_line in handle:
                consumed += len(last_line)
                yield last_line.decode("utf-8", "surrogateescape")

    reader = csv.reader(lines(), strict=True)
    complete, width = 0, None
    try:
        for record in reader:
            width = len(record) if width is None else width
            if len(record) != width or not last_line.endswith(b"\n"):
                break
            complete = consumed
    except csv.Error:
        pass
    if complete == size:
        return False
    if consumed < size or _more_records(path, consumed):
        raise ValueError(f"damaged CSV record at byte {complete} of {size} (not a torn last row)")
    os.truncate(path, complete)
    return True


def _more_records(path: Path, offset: int) -> bool:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return bool(handle.read(1))


def iter_output_rows(path: Path, fmt: str) -> Iterator[dict]:
    """Rows of an existing output file (CSV values stay strings)."""
    with open(path, newline="" if fmt == "csv" else None, **_ENCODING) as handle:
        if fmt == "csv":
            yield from csv.DictReader(handle)
            return
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not a JSON line ({exc})") from exc


def _csv_header(path: Path) -> list[str] | None:
    with open(path, newline="", **_ENCODING) as handle:
        return next(csv.reader(handle), None)


def row_key(row: dict) -> str:
    """The input path a written row stands for (as ``os.fsdecode`` gives it)."""
    encoded = row.get(PATH_BYTES_FIELD)
    return os.fsdecode(base64.b64decode(encoded)) if encoded else row["path"]


def _path_bytes(text: str) -> bytes:
    try:
        return os.fsencode(text)
    except UnicodeEncodeError:  # a lone surrogate that no file system produced
        return text.encode("utf-8", "surrogatepass")


def _printable(text: str) -> str:
    """``text`` if it is valid UTF-8; else its bytes with each undecodable one written as \\xNN."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _path_bytes(text).decode("utf-8", "backslashreplace")


def _output_row(row: dict) -> dict:
    out = {key: _printable(value) if isinstance(value, str) else value for key, value in row.items()}
    if out.get("path") != row.get("path"):
        out[PATH_BYTES_FIELD] = base64.b64encode(_path_bytes(row["path"])).decode("ascii")
    return out


class RowWriter:
    """Appends rows to JSONL or CSV (every value quoted) and flushes after each write."""

    def __init__(self, path: Path, fmt: str, fieldnames: list[str] | None = None):
        self.format = fmt
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists() or path.stat().st_size == 0
        self._handle: IO[str] = open(path, "a", newline="" if fmt == "csv" else None, **_ENCODING)
        if fmt == "csv":
            self.fieldnames = fieldnames or list(CSV_FIELDS)
            self._csv = csv.DictWriter(self._handle, self.fieldnames, restval="", extrasaction="ignore",
                                       lineterminator="\n", quoting=csv.QUOTE_ALL)
            if fresh:
                self._csv.writeheader()

    def write(self, rows: list[dict]) -> None:
        rows = [_output_row(row) for row in rows]
        if self.format == "csv":
            self._csv.writerows(_csv_cells(row) for row in rows)
        else:
            self._handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        self._handle.flush()

    def write_cells(self, rows: list[dict]) -> None:
        """CSV rows that are text already (read back from a CSV file)."""
        self._csv.writerows(rows)
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _csv_cells(row: dict) -> dict:
    cells = {}
    for key, value in row.items():
        if value is None:
            cells[key] = ""
        elif key == "top_k":
            cells[key] = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        else:
            cells[key] = value
    return cells


@dataclass
class Counts:
    ok: int = 0
    errors: int = 0
    unknown: int = 0

    def add(self, row: dict) -> None:
        if row.get("status") == "ok":
            self.ok += 1
            if row.get("unknown") in (True, "True", "true"):
                self.unknown += 1
        else:
            self.errors += 1


def read_previous(path: Path, fmt: str) -> tuple[set[str], Counts]:
    """Paths already scored in --out (after removing a torn last row) and their counts.

    ValueError, with the file untouched, when any line is not one osr-score writes
    (check_resume_file): a torn row is only cut from a file that is ours."""
    check_resume_file(path, fmt)
    if remove_torn_csv_record(path) if fmt == "csv" else remove_torn_last_line(path):
        print(f"osr-score: removed an incomplete last row from {path}", file=sys.stderr)
    done: set[str] = set()
    counts = Counts()
    for row in iter_output_rows(path, fmt):
        done.add(row_key(row))
        counts.add(row)
    return done, counts


_JSONL_ROW_START = b'{"path": '  # how RowWriter begins every JSONL row (json.dumps, "path" first)
_KNOWN_CSV_COLUMNS = frozenset((*CSV_FIELDS, FDR_COLUMN))


def check_resume_file(path: Path, fmt: str) -> None:
    """ValueError naming the first line of ``path`` that osr-score did not write; reads only.

    Every complete line must be a row as RowWriter writes it (``foreign_row``); an incomplete last
    line (a kill mid-write) must begin as such a row does. Blank JSONL lines are allowed.
    """
    if fmt == "csv":
        _check_csv_resume_file(path)
        return
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.endswith(b"\n"):
                if not line.startswith(_JSONL_ROW_START):
                    raise _foreign_line(number, "an incomplete last line that is not the start of a row")
                return
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
            except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
                raise _foreign_line(number, f"not a JSON row: {type(exc).__name__}") from None
            reason = foreign_row(row, csv_text=False)
            if reason:
                raise _foreign_line(number, reason)


def _check_csv_resume_file(path: Path) -> None:
    header: list[str] | None = None
    number = start = consumed = 0
    last_line = b""

    def lines() -> Iterator[str]:
        nonlocal consumed, last_line
        with open(path, "rb") as handle:
            for last_line in handle:
                consumed += len(last_line)
                yield last_line.decode("utf-8")

    try:
        for number, record in enumerate(csv.reader(lines(), strict=True), 1):
            if header is None:
                header = record
                unknown = [name for name in header if name not in _KNOWN_CSV_COLUMNS]
                if unknown or len(set(header)) != len(header) or not {"path", "status"} <= set(header):
                    raise _foreign_line(1, f"a header that osr-score does not write: {header[:8]}", "record")
            elif len(record) != len(header) or not last_line.endswith(b"\n"):
                break  # torn, or damaged before the end: remove_torn_csv_record tells which
            else:
                reason = foreign_row(dict(zip(header, record)), csv_text=True)
                if reason:
                    raise _foreign_line(number, reason, "record")
            start = consumed
    except (csv.Error, UnicodeDecodeError) as exc:
        if header is None:
            raise _foreign_line(1, f"not CSV: {type(exc).__name__}", "record") from None
        number += 1
    with open(path, "rb") as handle:
        handle.seek(start)
        tail = handle.read(1)
    if tail and tail != b'"':  # every value RowWriter writes is quoted
        raise _foreign_line(number, "an incomplete record that is not the start of a row", "record")


def foreign_row(row: object, *, csv_text: bool) -> str | None:
    """Why ``row`` (parsed from a JSONL line, or a CSV record as text) is not a row osr-score
    writes; None when it is one. Checks what --resume, --fdr and --summary read back."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    path, status = row.get("path"), row.get("status")
    if not isinstance(path, str):
        return f"its 'path' is {'missing' if path is None else 'a ' + type(path).__name__}, not a string"
    if status not in ("ok", "error"):
        return "its 'status' is neither 'ok' nor 'error'"
    encoded = row.get(PATH_BYTES_FIELD)
    if encoded not in (None, ""):
        try:
            base64.b64decode(encoded, validate=True)
        except (TypeError, ValueError):
            return f"its '{PATH_BYTES_FIELD}' is not base64 text"
    if status == "ok":
        p_value, unknown = row.get("p_value"), row.get("unknown")
        if csv_text:
            try:
                p_value = float(p_value)
            except (TypeError, ValueError):
                return "its 'p_value' is not a number"
            known_flag = unknown in ("True", "False")
        else:
            if isinstance(p_value, bool) or not isinstance(p_value, (int, float)):
                return "its 'p_value' is not a number"
            known_flag = isinstance(unknown, bool)
        if not 0.0 <= p_value <= 1.0:  # NaN fails too
            return "its 'p_value' is not between 0 and 1"
        if not known_flag:
            return "its 'unknown' is not true or false"
    return None


def _foreign_line(number: int, reason: str, unit: str = "line") -> ValueError:
    return ValueError(f"{unit} {number} is not a row osr-score writes ({reason}); nothing was changed: "
                      "give another --out, or --overwrite to replace the file")


def check_output_path(path: Path) -> None:
    """UsageError unless ``path`` can be a results file: not a folder or a FIFO, in a writable folder."""
    if path.is_dir():
        raise UsageError(f"--out {path} is a directory; give a file name ending in .jsonl or .csv")
    if path.exists() or path.is_symlink():
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise UsageError(f"--out {path}: {exc.strerror}") from None
        if not stat.S_ISREG(mode):
            raise UsageError(f"--out {path} is not a regular file")
        if not os.access(path, os.W_OK):
            raise UsageError(f"--out {path} is not writable")
        return
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"--out {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--out {path}: cannot create files in {folder}")


# -- scoring pipeline ------------------------------------------------------------------------------

_END = object()


def _load(path: str, predictor: Predictor) -> np.ndarray | dict:
    """Read (regular files only), decode and resize one file in a worker thread (osr.inputs, the
    path every entry point takes); failures come back as error rows."""
    try:
        return predictor.prepare(path)
    except Exception as exc:  # one odd file must never stop a million-file run
        return error_row(path, error_message(exc))


def _next_batch(pending: queue.Queue, batch_size: int, stop: threading.Event) -> tuple[list, bool]:
    """Wait for one queued item, then take whatever else is queued, up to ``batch_size``.

    Returns (batch, finished): finished once the end marker is taken. The wait gives up when
    ``stop`` is set; an exception queued by the producer is raised here.
    """
    batch: list = []
    while True:
        try:
            item = pending.get(timeout=_POLL_S) if not batch else pending.get_nowait()
        except queue.Empty:
            if batch or stop.is_set():
                return batch, False
            continue
        if item is _END:
            return batch, True
        if isinstance(item, BaseException):
            raise item
        batch.append(item)
        if len(batch) >= batch_size:
            return batch, False


def score_paths(
    predictor: Predictor,
    paths: Iterable[str],
    write: Callable[[list[dict]], None],
    *,
    batch_size: int = 64,
    top_k: int = 5,
    workers: int = 4,
    progress: object | None = None,
    stop: threading.Event | None = None,
) -> Counts:
    """Decode ``paths`` in ``workers`` threads ahead of the model; ``write(rows)`` once per batch.

    A bounded queue of decode futures (2 batches deep) keeps memory flat. A batch is cut when it
    is full or when no further decoded input is queued, so a slow input stream (a pipe) still
    gets its rows written promptly. When ``stop`` is set (Ctrl-C) the batch being gathered is
    dropped and the function returns within about 0.1 s: only whole batches are written.
    """
    stop = stop or threading.Event()
    pending: queue.Queue = queue.Queue(maxsize=2 * batch_size)
    counts = Counts()
    halt = threading.Event()
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="osr-decode")

    def put(item: object) -> bool:
        while not halt.is_set():  # never block forever once the consumer has gone
            try:
                pending.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for path in paths:
                if not put((path, executor.submit(_load, path, predictor))):
                    return
        except BaseException as exc:  # reported by the consumer
            put(exc)
        finally:
            put(_END)

    producer = threading.Thread(target=produce, name="osr-paths", daemon=True)
    producer.start()
    try:
        finished = False
        while not (finished or stop.is_set()):
            batch, finished = _next_batch(pending, batch_size, stop)
            entries = _decoded(batch, stop)
            if entries is None:
                break
            if entries:
                rows = predictor.complete_rows(entries, top_k)
                write(rows)
                for row in rows:
                    counts.add(row)
                if progress is not None:
                    progress.update(len(rows))
    finally:
        halt.set()
        executor.shutdown(wait=False, cancel_futures=True)
    return counts


def _decoded(batch: list[tuple[str, Future]], stop: threading.Event) -> list[tuple[str, object]] | None:
    """(path, image or error row) per item once all are decoded; None if ``stop`` is set first."""
    futures = [future for _, future in batch]
    while futures:
        _, waiting = concurrent.futures.wait(futures, timeout=_POLL_S)
        if stop.is_set():
            return None
        futures = list(waiting)
    return [(path, future.result()) for path, future in batch]


# -- FDR pass --------------------------------------------------------------------------------------

def add_fdr_column(path: Path, fmt: str, q: float) -> tuple[int, int]:
    """Second pass: write column bh_unknown (BH at level q over all ok rows). Returns (flagged, tested)."""
    p_values = np.fromiter(
        (float(row["p_value"]) for row in iter_output_rows(path, fmt) if row.get("status") == "ok"),
        dtype=np.float64,
    )
    flagged = benjamini_hochberg(p_values, q) if p_values.size else np.zeros(0, bool)
    with atomic_path(path) as temp:
        fieldnames = None
        if fmt == "csv":
            header = _csv_header(path) or list(CSV_FIELDS)
            fieldnames = header + ([FDR_COLUMN] if FDR_COLUMN not in header else [])
        writer = RowWriter(temp, fmt, fieldnames)
        write = writer.write_cells if fmt == "csv" else writer.write
        index = 0
        buffer: list[dict] = []
        for row in iter_output_rows(path, fmt):
            if row.get("status") == "ok":
                row[FDR_COLUMN] = bool(flagged[index])
                index += 1
            else:
                row[FDR_COLUMN] = None
            if fmt == "csv":
                row[FDR_COLUMN] = "" if row[FDR_COLUMN] is None else str(row[FDR_COLUMN])
            buffer.append(row)
            if len(buffer) >= 1024:
                write(buffer)
                buffer.clear()
        write(buffer)
        writer.close()
    return int(flagged.sum()), int(p_values.size)


# -- main ------------------------------------------------------------------------------------------

def _validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """Argument problems exit 2 through ``parser.error``; returns the output format."""
    try:
        fmt = output_format(args.out)
    except ValueError as exc:
        parser.error(str(exc))
    problem = _check_inputs(args.inputs)
    if problem:
        parser.error(problem)
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    if args.out.is_file() and not (args.resume or args.overwrite):
        parser.error(f"{args.out} exists; pass --resume to continue it or --overwrite to replace it")
    return fmt


def _load_predictor(args: argparse.Namespace) -> Predictor:
    """The model, or UsageError with one line saying why not (the documented exit 2)."""
    try:
        return Predictor.from_repository(
            args.model_repository, args.model, args.version,
            triton_url=args.triton_url, triton_protocol=args.triton_protocol,
            threads=args.threads, max_pixels=args.max_pixels,
        )
    except (ManifestError, PredictorError) as exc:
        raise UsageError(f"cannot load the model: {_one_line(exc)}") from None
    except Exception as exc:  # whatever a broken repository makes a library raise
        raise UsageError(f"cannot load the model: {type(exc).__name__}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _open_output(args: argparse.Namespace, fmt: str) -> tuple[RowWriter, set[str], Counts]:
    """The writer (appending after a resume) with the paths and counts of the rows already there."""
    done: set[str] = set()
    previous = Counts()
    fieldnames = None
    try:
        if args.out.exists() and args.resume:
            try:
                done, previous = read_previous(args.out, fmt)
            except (ValueError, KeyError, csv.Error) as exc:
                raise UsageError(f"cannot resume from {args.out}: {_one_line(exc)}") from None
            if fmt == "csv" and args.out.stat().st_size:
                fieldnames = _csv_header(args.out)
        elif args.out.exists():
            args.out.unlink()
        return RowWriter(args.out, fmt, fieldnames), done, previous
    except OSError as exc:
        raise UsageError(f"cannot write --out {args.out}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _stop_on_sigint() -> Iterator[threading.Event]:
    """The first Ctrl-C sets the event (the run ends after whole batches); a second one interrupts."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def run(args: argparse.Namespace, predictor: Predictor, writer: RowWriter, done: set[str],
        stop: threading.Event) -> Counts:
    """Score every input path not in ``done`` and append the rows through ``writer``."""
    from tqdm import tqdm

    paths = (path for path in iter_input_paths(args.inputs) if path not in done)
    progress = tqdm(unit="img", desc="osr-score", initial=0, disable=None, file=sys.stderr)
    try:
        with predictor:
            return score_paths(
                predictor, paths, writer.write, batch_size=args.batch_size, top_k=args.top_k,
                workers=args.workers, progress=progress, stop=stop,
            )
    finally:
        progress.close()


# -- what the console says about the model ---------------------------------------------------------

def model_words(predictor: Predictor) -> str:
    """'model NAME version N from REPOSITORY', the words every console line about the model uses."""
    where = predictor.version_dir.parent.parent if predictor.version_dir is not None else "?"
    return f"model {predictor.name} version {predictor.version} from {where}"


def _class_like_folders(folder: str, limit: int = 1000) -> list[str]:
    """Names of ``folder``'s subfolders that hold image files directly (up to ``limit`` entries each)."""
    names = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            with contextlib.suppress(OSError), os.scandir(entry.path) as inside:
                for _, item in zip(range(limit), inside):
                    if os.path.splitext(item.name)[1].lower() in IMAGE_EXTENSIONS and item.is_file():
                        names.append(entry.name)
                        break
    return names


def model_notes(args: argparse.Namespace, predictor: Predictor) -> list[str]:
    """Lines for stderr before scoring: the model used; a WARNING when it is the bundled default; a
    WARNING per INPUT folder whose class-like subfolders are not classes of the model."""
    lines = [f"osr-score: {model_words(predictor)} ({len(predictor.classes)} classes: "
             f"{', '.join(predictor.classes)}; anything else is unknown)"]
    if args.model_repository is None and not os.environ.get(MODEL_REPOSITORY_ENV):
        lines.append(f"osr-score: WARNING: no --model-repository and no ${MODEL_REPOSITORY_ENV}: scoring with the "
                     f"BUNDLED model {predictor.name}, not yours; for a model of your own classes pass "
                     "--model-repository exports --model NAME (what osr-export wrote)")
    classes = {name.casefold() for name in predictor.classes}
    for item in args.inputs:
        if item.startswith("@") or not os.path.isdir(item):
            continue
        folders = _class_like_folders(item)
        foreign = [name for name in folders if name.casefold() not in classes]
        if len(folders) < 2 or not foreign:
            continue
        shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
        verdict = ("none of them is one of its classes: is this the model you meant?" if len(foreign) == len(folders)
                   else "their images can only come out as unknown or as one of its classes")
        lines.append(f"osr-score: WARNING: {item} holds class folders ({shown}) that {predictor.name} was not "
                     f"trained on; {verdict}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    fmt = _validate(args, parser)
    try:
        check_output_path(args.out)
        predictor = _load_predictor(args)
        writer, done, previous = _open_output(args, fmt)
    except UsageError as exc:
        print(f"osr-score: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print("\n".join(model_notes(args, predictor)), file=sys.stderr, flush=True)

    interrupted = f"osr-score: interrupted; rows so far are in {args.out} (continue with --resume)"
    with _stop_on_sigint() as stop:
        try:
            counts = run(args, predictor, writer, done, stop)
        except KeyboardInterrupt:
            print(f"\n{interrupted}", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as exc:
            print(f"osr-score: error: {type(exc).__name__}: {exc}\nrows so far are in {args.out}; "
                  "continue with --resume", file=sys.stderr)
            return EXIT_FAILURE
        finally:
            writer.close()
    if stop.is_set():
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED

    summary = (f"osr-score: {counts.ok} scored ({counts.unknown} unknown), {counts.errors} failed"
               + (f", {len(done)} already in {args.out}" if done else "") + f" -> {args.out}"
               + f" ({model_words(predictor)})")
    print(summary, file=sys.stderr)
    if args.fdr is not None:
        flagged, tested = add_fdr_column(args.out, fmt, args.fdr)
        print(f"osr-score: Benjamini-Hochberg at q={args.fdr}: {flagged} of {tested} flagged unknown "
              f"(column {FDR_COLUMN})", file=sys.stderr)
    if args.summary:
        batch = summarize_rows(iter_output_rows(args.out, fmt), predictor.record.threshold)
        print(format_summary(batch))
        if batch.rate_alarm or batch.uniformity_alarm:
            print(f"osr-score: ALARM: this batch is not what {predictor.name}'s threshold was calibrated on "
                  f"(docs/serving.md#monitoring-the-unknown-flag); exit {EXIT_ALARM}", file=sys.stderr)
            return EXIT_ALARM
    return EXIT_SOME_FAILED if counts.errors + previous.errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
