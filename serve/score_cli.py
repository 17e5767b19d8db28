"""osr-score: classify many image files with an exported model; one result row per file.

Streams: paths are produced lazily (folders walked, globs expanded, list files read line by
line), decoding runs in a thread pool ahead of the model, and rows are written and flushed after
every batch, so memory stays flat and a killed run loses at most one batch (--resume).

This module is the CLI: argument parsing, the scoring loop and main. The results file (RowWriter,
torn-record repair, resume) is osr.serve.score_output; the --fdr pass is osr.serve.fdr.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import glob
import os
import queue
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from osr.export.manifest import ManifestError
from osr.inputs import error_message
from osr.serve.decode import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from osr.serve.fdr import add_fdr_column
from osr.serve.monitor import format_summary, summarize_rows
from osr.serve.predictor import MODEL_REPOSITORY_ENV, Predictor, PredictorError
from osr.serve.preflight import one_line
from osr.serve.results import error_row
from osr.serve.score_output import (
    ENCODING,
    FDR_COLUMN,
    PATH_BYTES_FIELD,
    Counts,
    RowWriter,
    csv_header,
    iter_output_rows,
    output_format,
    read_previous,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SOME_FAILED = 3
EXIT_ALARM = 4  # --summary raised an ALARM (before 3: the failed rows are in --out and its summary line)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

_GLOB_CHARS = frozenset("*?[")
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
    stream = sys.stdin if name == "-" else open(name, **ENCODING)
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
        raise UsageError(f"cannot load the model: {one_line(exc)}") from None
    except Exception as exc:  # whatever a broken repository makes a library raise
        raise UsageError(f"cannot load the model: {type(exc).__name__}: {one_line(exc)}") from None


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
                raise UsageError(f"cannot resume from {args.out}: {one_line(exc)}") from None
            if fmt == "csv" and args.out.stat().st_size:
                fieldnames = csv_header(args.out)
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
