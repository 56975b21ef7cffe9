"""Keeping the write-ahead log short: when a writer checkpoints, and flushing the WAL to
disk ahead of that checkpoint.

No connection checkpoints on its own (SQLite 3.40's WAL-reset bug); each writer asks its
`WalWatch` after a commit. The periodic checkpoint is RESTART: it holds other writers off
while it runs, which is what makes it safe with that bug, and the next commit writes the
WAL from its start again over blocks the file system already holds (TRUNCATE frees them,
and the commits after it pay to allocate them again). Closing a writer truncates.

Most of a checkpoint's time is the fsync of the WAL (the kernel writing out every dirty
WAL page). A background thread fsyncs the WAL every `FLUSH_BYTES`, off the writer's
path, so the checkpoint finds little left to write."""

from __future__ import annotations

import os
import sqlite3
import struct
import threading
from pathlib import Path
from queue import SimpleQueue

from . import sql

CHECKPOINT_BYTES = 32 * 1024 * 1024
FLUSH_BYTES = 8 * 1024 * 1024
# A checkpoint that finds readers on old frames gives up after this long; the next
# commit tries again.
CHECKPOINT_BUSY_MS = 200

# The wal-index header at the start of the -shm file (https://sqlite.org/walformat.html):
# its version, the last valid frame (mxFrame) and, in the checkpoint info that follows
# the header's two copies, how many frames are already in the database (nBackfill).
# Native byte order, as SQLite maps it.
_SHM_VERSION = 3007000
_SHM_HEADER = struct.Struct("=I12xI76xI")  # iVersion at 0, mxFrame at 16, nBackfill at 96
_FRAME_HEADER_BYTES = 24


class WalWatch:
    """Watches one ledger's WAL for a writer connection: how many frames are waiting for
    a checkpoint, read from the shared wal-index (one pread, no lock, no query)."""

    def __init__(self, path: str | Path, conn: sqlite3.Connection) -> None:
        self._path = str(path)
        self._wal = f"{self._path}-wal"
        self._frame_bytes = int(conn.execute(sql.PAGE_SIZE).fetchone()[0]) + _FRAME_HEADER_BYTES
        self._shm: int | None = None
        self._flushed_at = 0  # mxFrame when the WAL was last handed to the flusher
        try:
            self._shm = os.open(f"{self._path}-shm", os.O_RDONLY)
        except OSError:
            self._shm = None

    def _frames(self) -> tuple[int, int] | None:
        """(mxFrame, nBackfill), or None if the wal-index cannot be read."""
        if self._shm is None:
            return None
        try:
            head = os.pread(self._shm, _SHM_HEADER.size, 0)
        except OSError:
            return None
        if len(head) < _SHM_HEADER.size:
            return None
        version, last, backfilled = _SHM_HEADER.unpack(head)
        return (last, backfilled) if version == _SHM_VERSION else None

    def pending_bytes(self) -> int:
        """WAL bytes not yet checkpointed (without a wal-index: the WAL file's size)."""
        frames = self._frames()
        if frames is None:
            return file_size(self._wal)
        last, backfilled = frames
        return max(last - backfilled, 0) * self._frame_bytes

    def wants_checkpoint(self) -> bool:
        return self.pending_bytes() >= CHECKPOINT_BYTES

    def after_commit(self, conn: sqlite3.Connection, busy_timeout_ms: int) -> bool:
        """Checkpoint if the WAL is long, or hand it to the flusher if it has grown by
        FLUSH_BYTES since the last flush; returns whether a checkpoint completed. The
        connection must not be inside a transaction."""
        frames = self._frames()
        if frames is None:  # no wal-index to read: go by the file, and truncate it
            if file_size(self._wal) < CHECKPOINT_BYTES:
                return False
            return checkpoint(conn, busy_timeout_ms, sql.CHECKPOINT_TRUNCATE)
        last, backfilled = frames
        if last < self._flushed_at:  # the WAL started over
            self._flushed_at = 0
        if (last - backfilled) * self._frame_bytes >= CHECKPOINT_BYTES:
            done = checkpoint(conn, busy_timeout_ms, sql.CHECKPOINT_RESTART)
            self._flushed_at = 0 if done else self._flushed_at
            return done
        if (last - self._flushed_at) * self._frame_bytes >= FLUSH_BYTES:
            self._flushed_at = last
            flush_soon(self._wal)
        return False

    def close(self, conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
        """Leave the WAL empty and truncated (if no reader is on it), and stop watching."""
        if file_size(self._wal) > 0:
            checkpoint(conn, busy_timeout_ms, sql.CHECKPOINT_TRUNCATE)
        if self._shm is not None:
            os.close(self._shm)
            self._shm = None


def checkpoint(conn: sqlite3.Connection, busy_timeout_ms: int, statement: str) -> bool:
    """Run a checkpoint statement, waiting at most CHECKPOINT_BUSY_MS for readers on old
    frames; returns whether it completed."""
    conn.execute(sql.SET_BUSY_TIMEOUT.format(ms=CHECKPOINT_BUSY_MS))
    try:
        busy = conn.execute(statement).fetchone()[0]
    except sqlite3.OperationalError:
        busy = 1
    finally:
        conn.execute(sql.SET_BUSY_TIMEOUT.format(ms=busy_timeout_ms))
    return not busy


def file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# One flusher thread per process, started on first use (and again in a forked child).
_flush_lock = threading.Lock()
_flush_queue: SimpleQueue[str] | None = None


def flush_soon(wal_path: str) -> None:
    """fsync the WAL file on the flusher thread. Safe at any moment: it only asks the
    kernel to write out what SQLite already wrote."""
    global _flush_queue
    with _flush_lock:
        if _flush_queue is None:
            _flush_queue = SimpleQueue()
            threading.Thread(target=_flush_forever, args=(_flush_queue,),
                             name="evq-wal-flush", daemon=True).start()
        _flush_queue.put(wal_path)


def _flush_forever(queue: SimpleQueue[str]) -> None:
    while True:
        path = queue.get()
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # the WAL is gone: nothing to flush
        try:
            os.fsync(fd)
        except OSError:
            pass  # only an optimisation: the checkpoint syncs the WAL itself
        finally:
            os.close(fd)


def _forget_flusher() -> None:
    global _flush_lock, _flush_queue
    _flush_lock, _flush_queue = threading.Lock(), None


os.register_at_fork(after_in_child=_forget_flusher)
