"""Safe writes to the shared cache and the one validated cache mechanism every cache uses.

Two notebooks may build the same model or logits at once; the lock makes the second wait and then load, and atomic
writes mean a reader sees either no file or a complete one.

Validated entries
-----------------
A cache entry is a set of data files plus one JSON metadata file beside them that records each file's size and
SHA-256 (:func:`write_entry`, written last: its presence marks the entry complete). :func:`read_entry` checks them on
load, so a truncated, emptied, replaced or bit-flipped file is caught before it is parsed. :func:`load_or_build` is
the train-or-load protocol: a damaged entry is reported (a :class:`CacheCorruptionWarning` naming the file and what
was wrong), deleted and rebuilt under the lock, never used. A new cache needs one call::

    def load():
        meta = read_entry(folder / "meta.json", required=["fitted"])
        return torch.load(folder / "state.pt", weights_only=True), meta

    def build():
        state = fit(...)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(folder / "state.pt") as fh:
            torch.save(state, fh)
        write_entry(folder / "meta.json", [folder / "state.pt"], {"fitted": True})
        return state, ...

    state, meta = load_or_build(folder.with_suffix(".lock"), load, build, lambda: shutil.rmtree(folder, True))

Hashing runs at 0.5-2 GB/s depending on the CPU (``benchmarks/cache_corruption.py`` prints it against a plain
read), so a full-profile logit store of about 1 GB costs 0.5-2 s the first time a process opens it; later opens of an
unmodified file in the same process only compare its size, modification time and inode.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

try:
    import fcntl
except ImportError:  # Windows: no lock; two builders may both build, with the same result
    fcntl = None

__all__ = ["CacheCorruptionWarning", "CacheMiss", "CorruptCacheError", "atomic_write", "file_lock", "file_record",
           "load_or_build", "read_entry", "read_json", "verify_files", "write_entry"]

T = TypeVar("T")


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


# --------------------------------------------------------------------------------------------- validated cache entries
class CorruptCacheError(ValueError):
    """A cache entry failed validation: ``path`` is the damaged file, ``problem`` says what was wrong."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


class CacheCorruptionWarning(UserWarning):
    """Issued when a damaged cache entry is found; it is then rebuilt, never used."""


class CacheMiss(LookupError):
    """The entry does not exist (or was never completed): build it."""


def file_record(path: str | Path, chunk: int = 1 << 22) -> dict:
    """``{"size": bytes, "sha256": hex digest}`` of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
            size += len(block)
    return {"size": size, "sha256": digest.hexdigest()}


# Files this process has hashed and found as recorded, by (path, size, mtime, inode, digest): opening the same entry
# again (a chapter reading one store several times) costs a stat, not a second pass over the file.
_VERIFIED: set[tuple] = set()


def verify_files(root: str | Path, records: Mapping[str, Mapping]) -> None:
    """Check that every file ``root / name`` exists with the recorded size and SHA-256; else :class:`CorruptCacheError`.

    The size is compared first (a truncated file fails without being read), then the digest (a flipped bit). A file
    already verified by this process and not modified since (same size, modification time and inode) is not re-read.
    """
    if not isinstance(records, Mapping) or not records:
        raise CorruptCacheError(root, "no file checksums recorded (written by an older version?)")
    for name, rec in records.items():
        path = Path(root) / name
        if not path.is_file():
            raise CorruptCacheError(path, "file is missing")
        st = path.stat()
        if st.st_size != rec.get("size"):
            raise CorruptCacheError(path, f"size is {st.st_size} bytes, expected {rec.get('size')} "
                                          f"(truncated or replaced)")
        seen = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, rec.get("sha256"))
        if seen in _VERIFIED:
            continue
        if file_record(path)["sha256"] != rec.get("sha256"):
            raise CorruptCacheError(path, "SHA-256 differs from the one recorded (the content changed)")
        _VERIFIED.add(seen)


def read_json(path: str | Path, required: Sequence[str] = ()) -> dict:
    """A JSON object from ``path`` holding the ``required`` keys, or :class:`CorruptCacheError` saying what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CorruptCacheError(path, "file is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCacheError(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CorruptCacheError(path, f"expected a JSON object, got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    if missing:
        raise CorruptCacheError(path, f"missing keys {missing}")
    return data


def _dump(obj: Mapping) -> str:
    return json.dumps(obj, indent=1)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write_entry(meta_path: str | Path, files: Sequence[str | Path], meta: Mapping) -> dict:
    """Record the size and SHA-256 of ``files`` (already written, beside ``meta_path``) in ``meta``, and write it.

    The metadata carries the SHA-256 of its own text too (``meta_sha256``), so a changed byte in it is caught as well.
    It is written last and atomically: its presence marks the entry complete. Returns the metadata as written.
    """
    meta_path = Path(meta_path)
    info = {k: v for k, v in meta.items() if k != "meta_sha256"}
    info["files"] = {Path(f).name: file_record(f) for f in files}
    info = json.loads(_dump(info))  # as it will read back (tuples become lists)
    info["meta_sha256"] = _digest(_dump(info))
    with atomic_write(meta_path, "w") as fh:
        fh.write(_dump(info))
    return info


def read_entry(meta_path: str | Path, required: Sequence[str] = (), strict: bool = True) -> dict:
    """The metadata of a complete, undamaged entry (see :func:`write_entry`).

    Raises :class:`CacheMiss` when ``meta_path`` does not exist and :class:`CorruptCacheError` when it is unreadable,
    changed, lacks a ``required`` key, or a file it records is missing, truncated or changed. With ``strict=False`` a
    metadata file without checksums (written by hand, in a documented format) passes with the JSON checks only.
    """
    meta_path = Path(meta_path)
    if not meta_path.exists():
        raise CacheMiss(str(meta_path))
    meta = read_json(meta_path, required)
    if not strict and "files" not in meta and "meta_sha256" not in meta:
        return meta
    recorded = meta.get("meta_sha256")
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    if recorded is None or _digest(_dump(body)) != recorded or _dump(meta) != meta_path.read_text():
        raise CorruptCacheError(meta_path, "its content differs from the checksum it records (edited or damaged)"
                                if recorded is not None else "no checksum recorded (written by an older version?)")
    verify_files(meta_path.parent, meta.get("files"))
    return meta


def load_or_build(lock_path: str | Path, load: Callable[[], T], build: Callable[[], T], discard: Callable[[], None],
                  *, force: bool = False) -> T:
    """The one train-or-load protocol of every cache.

    ``load()`` returns the cached object or raises :class:`CacheMiss` (absent) or :class:`CorruptCacheError`
    (damaged); ``build()`` creates, writes and returns it; ``discard()`` deletes a damaged entry. Without ``force``,
    a valid entry is loaded without the lock. Otherwise the lock is taken and the entry checked again (another
    process may have built it meanwhile); a damaged one is reported with a :class:`CacheCorruptionWarning` naming the
    file and the problem, discarded and rebuilt, never used.
    """
    if not force:
        with contextlib.suppress(CacheMiss, CorruptCacheError):
            return load()
    with file_lock(lock_path):
        if not force:
            try:
                return load()
            except CacheMiss:
                pass
            except CorruptCacheError as exc:
                warnings.warn(f"damaged cache entry {exc.path}: {exc.problem}; rebuilding it", CacheCorruptionWarning,
                              stacklevel=3)
                discard()
        return build()
