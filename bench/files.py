"""File primitives every stage shares: content hashes, atomic writes and exclusive locks.

Manifests, checkpoints, pretraining curves, sweep sidecars and result tables are all written
through `atomic_write_bytes`, so a reader never sees half a file, and content (not paths or
times) identifies manifests and checkpoints through `file_sha256`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class LockBusy(Exception):
    """Another process holds the lock and the caller asked not to wait for it."""


@contextlib.contextmanager
def exclusive_lock(path: str | Path, log: logging.Logger, waiting: str, *args: object,
                   wait: bool = True) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created, with its folder) for the block; when another
    holder makes this one wait, say so first with `log.info(waiting, *args)`. With `wait=False`
    a held lock raises LockBusy instead, before the block runs.

    flock (not fcntl/lockf record locks) because it belongs to the open file description: it is
    released when the holder exits however it exits, including SIGKILL, and two descriptors in one
    process exclude each other like two processes do. Lock files are left in place: deleting one
    while another process waits on it would let a third lock a new file of the same name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise LockBusy(str(path)) from None
            log.info(waiting, *args)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temp file in the same folder and os.replace, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
