"""Replace a file so that a crash leaves the old file or the new one, never a half-written one.

Every writer of a file that something else reads (checkpoints, metrics.json, manifests, Triton
configs, curves, score-CLI outputs) goes through ``atomic_path``: the data is written to a
temporary file in the target's folder, flushed to disk, and renamed over the target in one step.
The new file gets the old one's permission bits, or the process umask's for a new file
(``tempfile.mkstemp`` would make it 0600, unreadable to a Triton server running as another user).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, fsync it and
    rename it over ``path``; on error remove it and leave ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield temp
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        if path.exists():
            shutil.copymode(path, temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")
