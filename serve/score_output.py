"""osr-score's results file: writing rows (JSONL or CSV), reading them back, and resuming.

RowWriter appends rows and flushes after every batch; a run killed mid-write leaves at most one
torn last row, which ``read_previous`` (--resume) cuts off after ``check_resume_file`` has made
sure every line is one osr-score writes. The FDR pass over a finished file is osr.serve.fdr's
``add_fdr_column``; the CLI (argument parsing, the main loop) is osr.serve.score_cli.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from osr.serve.results import ROW_FIELDS

FDR_COLUMN = "bh_unknown"
PATH_BYTES_FIELD = "path_bytes_b64"  # the exact bytes of a path that is not valid UTF-8
CSV_FIELDS = (*ROW_FIELDS, PATH_BYTES_FIELD)
ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}  # file names need not be valid UTF-8


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


class _CsvLines:
    """A file's lines as text for csv.reader, counting the bytes read (``consumed``) and keeping
    the last line's bytes (``last_line``), so a caller knows where each record ends."""

    def __init__(self, path: Path, errors: str = "strict"):
        self.path, self.errors = path, errors
        self.consumed = 0
        self.last_line = b""

    def __iter__(self) -> Iterator[str]:
        with open(self.path, "rb") as handle:
            for self.last_line in handle:
                self.consumed += len(self.last_line)
                yield self.last_line.decode("utf-8", self.errors)


def remove_torn_csv_record(path: Path) -> bool:
    """Truncate a CSV file after its last complete record; ValueError for damage before the end.

    A line-based cut is wrong for CSV: a quoted value may hold newlines, so a kill inside a path
    with a newline leaves a last line that ends in one. The csv module parses the records instead;
    the tail after the last record that ends in a newline with a full row of values is torn.
    """
    size = path.stat().st_size
    lines = _CsvLines(path, "surrogateescape")
    reader = csv.reader(lines, strict=True)
    complete, width = 0, None
    try:
        for record in reader:
            width = len(record) if width is None else width
            if len(record) != width or not lines.last_line.endswith(b"\n"):
                break
            complete = lines.consumed
    except csv.Error:
        pass
    if complete == size:
        return False
    if lines.consumed < size or _more_records(path, lines.consumed):
        raise ValueError(f"damaged CSV record at byte {complete} of {size} (not a torn last row)")
    os.truncate(path, complete)
    return True


def _more_records(path: Path, offset: int) -> bool:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return bool(handle.read(1))


def iter_output_rows(path: Path, fmt: str) -> Iterator[dict]:
    """Rows of an existing output file (CSV values stay strings)."""
    with open(path, newline="" if fmt == "csv" else None, **ENCODING) as handle:
        if fmt == "csv":
            yield from csv.DictReader(handle)
            return
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not a JSON line ({exc})") from exc


def csv_header(path: Path) -> list[str] | None:
    with open(path, newline="", **ENCODING) as handle:
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
        self._handle: IO[str] = open(path, "a", newline="" if fmt == "csv" else None, **ENCODING)
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
    number = start = 0
    lines = _CsvLines(path)
    try:
        for number, record in enumerate(csv.reader(lines, strict=True), 1):
            if header is None:
                header = record
                unknown = [name for name in header if name not in _KNOWN_CSV_COLUMNS]
                if unknown or len(set(header)) != len(header) or not {"path", "status"} <= set(header):
                    raise _foreign_line(1, f"a header that osr-score does not write: {header[:8]}", "record")
            elif len(record) != len(header) or not lines.last_line.endswith(b"\n"):
                break  # torn, or damaged before the end: remove_torn_csv_record tells which
            else:
                reason = foreign_row(dict(zip(header, record)), csv_text=True)
                if reason:
                    raise _foreign_line(number, reason, "record")
            start = lines.consumed
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
