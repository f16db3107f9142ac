"""Safe writes to the shared cache: an inter-process lock and atomic file replacement.

Two notebooks may build the same model or logits at once; the lock makes the second wait and then load, and atomic
writes mean a reader sees either no file or a complete one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no lock; two builders may both build, with the same result
    fcntl = None

__all__ = ["atomic_write", "file_lock"]


@contextlib.contextmanager
def file_lock(path: str | Path):
    """An exclusive inter-process lock held while the block runs (a no-op where ``fcntl`` is missing)."""
    with open(path, "a+") as fh:
        if fcntl is not None:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb"):
    """Open a temporary file beside ``path``; on success rename it onto ``path``, on error delete it.

    Readers therefore see either no file or a complete one, never a half-written file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
