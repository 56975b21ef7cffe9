"""Keeping the write-ahead log short: when a writer checkpoints, and flushing the WAL to
disk ahead of that checkpoint.

No connection checkpoints on its own (SQLite 3.40's WAL-reset bug: a checkpoint that
starts while a commit starts the WAL over can corrupt the file); each writer asks its
`WalWatch` after a commit. The checkpoint is TRUNCATE: when it gets the writer lock and
no reader is left in the WAL, it resets the WAL itself, under that lock, and commits
have nothing to start over. That narrows the bug's window without closing it: a
checkpoint a reader keeps from finishing leaves the WAL copied but not reset, and the
next commit starts it over; one that waits more than CHECKPOINT_BUSY_MS for the writer
lock runs as PASSIVE, beside that writer's commit. Only SQLite 3.51.3 (or the 3.44.6
and 3.50.7 backports) closes it.

Most of a checkpoint's time is the fsync of the WAL (the kernel writing out every dirty
WAL page). A background thread fsyncs the WAL every `FLUSH_BYTES`, off the writer's
path, so the checkpoint finds little left to write.

This module never opens the `-shm` file: closing a descriptor of a file drops every
POSIX lock the process holds on it, SQLite's included."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from queue import SimpleQueue

from ...logs import get_logger
from . import connection, sql

_log = get_logger("evq.wal")

CHECKPOINT_BYTES = 32 * 1024 * 1024
FLUSH_BYTES = 8 * 1024 * 1024
# A checkpoint that finds readers on old frames gives up after this long; the writer
# tries again once the WAL has grown by RETRY_BYTES more, so that a reader holding a
# snapshot costs the commits behind it one wait, not one each.
CHECKPOINT_BUSY_MS = 200
RETRY_BYTES = 8 * 1024 * 1024
# A one-statement commit writes a few pages: the WAL's size (a stat, a few microseconds,
# as much as a tenth of such a commit) is looked at only once every this many of them.
LOOK_EVERY = 16


class WalWatch:
    """Watches one ledger's WAL for a writer connection."""

    def __init__(self, path: str | Path) -> None:
        self._wal = f"{path}-wal"
        self._flushed_at = 0  # the WAL's size when it was last handed to the flusher
        self._small_commits = 0  # since the last look at the WAL
        self._busy_at = 0  # the WAL's size when a checkpoint last gave up, or 0

    def pending_bytes(self) -> int:
        """The WAL file's size: after a truncating checkpoint, what waits for the next
        one; after a commit started the WAL over inside a longer file, an upper bound."""
        return file_size(self._wal)

    def wants_checkpoint(self) -> bool:
        return self._due(self.pending_bytes())

    def _due(self, size: int) -> bool:
        if size < CHECKPOINT_BYTES:
            self._busy_at = 0  # checkpointed since, by this writer or another
            return False
        return not self._busy_at or size >= self._busy_at + RETRY_BYTES

    def after_commit(self, conn: sqlite3.Connection, busy_timeout_ms: int, *,
                     small: bool = False) -> bool:
        """Checkpoint if the WAL is long, or hand it to the flusher if it has grown by
        FLUSH_BYTES since the last flush; returns whether a checkpoint completed. The
        connection must not be inside a transaction. A `small` commit (one statement)
        may be let through without a look at the WAL."""
        if small:
            self._small_commits += 1
            if self._small_commits < LOOK_EVERY:
                return False
        self._small_commits = 0
        size = file_size(self._wal)
        if size < self._flushed_at:  # truncated since: by us or by another process
            self._flushed_at = 0
        if self._due(size):
            done = checkpoint(conn, busy_timeout_ms, sql.CHECKPOINT_TRUNCATE)
            if done:
                self._flushed_at = self._busy_at = 0
            else:
                # The WAL may start over inside this file: flush by its size from scratch.
                self._flushed_at, self._busy_at = 0, size
            return done
        if size - self._flushed_at >= FLUSH_BYTES:
            self._flushed_at = size
            flush_soon(self._wal)
        return False

    def close(self, conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
        """Leave the WAL empty and truncated (if no reader is on it)."""
        if file_size(self._wal) > 0:
            checkpoint(conn, busy_timeout_ms, sql.CHECKPOINT_TRUNCATE)


def checkpoint(conn: sqlite3.Connection, busy_timeout_ms: int, statement: str) -> bool:
    """Run a checkpoint statement, waiting at most CHECKPOINT_BUSY_MS for readers on old
    frames; returns whether it completed."""
    conn.execute(sql.SET_BUSY_TIMEOUT.format(ms=CHECKPOINT_BUSY_MS))
    try:
        busy = conn.execute(statement).fetchone()[0]
    except sqlite3.OperationalError as exc:
        # Never raised: the commit before it stands. A full disk or an I/O error is
        # worth a log line; a busy or locked file is routine.
        if not connection.is_busy(exc):
            _log.warning("evq.checkpoint_failed", error=repr(exc), statement=statement)
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
