"""Driver errors mapped to evq's typed errors, in one place.

Whatever the SQLite driver raises on a ledger file (disk full, read-only, locked past the
busy timeout, damaged pages, a table missing) becomes the `evq.LedgerError` subclass
that says what happened, naming the file and what to do. Callers that catch
`sqlite3.Error` hand it to `ledger_error` and raise what it returns.

SQLite's error code says what went wrong; where it cannot tell the causes apart (it
cannot open the file: is the directory missing, or read-only?), the file system is
looked at, once, after the failure."""

from __future__ import annotations

import os
import resource
import sqlite3
from pathlib import Path

from ...errors import (
    LedgerCorrupt,
    LedgerError,
    LedgerFull,
    LedgerIOError,
    LedgerLocked,
    LedgerNotFound,
    LedgerReadOnly,
    LedgerSchemaError,
)

_IOERR_WRITE = sqlite3.SQLITE_IOERR | (3 << 8)
_BUSY_SNAPSHOT = sqlite3.SQLITE_BUSY | (2 << 8)
_LARGEST_WRITE = 1 << 16  # a page of the largest size SQLite allows


def ledger_error(exc: sqlite3.Error, path: str | Path, doing: str = "using",
                 busy_timeout: float | None = None) -> LedgerError:
    """The typed error for a driver error raised while `doing` something to `path`
    (`busy_timeout` in seconds, to say how long evq waited for a lock)."""
    extended = getattr(exc, "sqlite_errorcode", 0) or 0
    code = extended & 0xFF
    text = str(exc)
    where = f"{doing} the ledger {path}"
    if code == sqlite3.SQLITE_FULL or (extended == _IOERR_WRITE and _size_limit_hit(path)):
        return LedgerFull(f"{where}: the disk is full (or a file size limit was reached); "
                          "nothing was written. Free some space, then try again")
    if code == sqlite3.SQLITE_READONLY:
        return LedgerReadOnly(
            f"{where}: the file is read-only for this process ({text}). evq writes the "
            f"file and its -wal and -shm files beside it: make {path} and its directory "
            "writable (and the mount, if it is mounted read-only)")
    if extended == _BUSY_SNAPSHOT:
        return LedgerLocked(
            f"{where}: the transaction read the ledger before it wrote, and another "
            "connection committed in between, so it cannot write from what it read (it "
            "would not wait: waiting cannot help). Nothing was written. Roll back and try "
            "again, and open the transaction with BEGIN IMMEDIATE so it holds the write "
            "lock from the start")
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        waited = "" if busy_timeout is None else f" (busy_timeout {busy_timeout:g} s)"
        return LedgerLocked(
            f"{where}: another connection held the write lock for longer than evq "
            f"waits{waited}; nothing was written. Find what holds the file open in a long "
            "transaction, or raise busy_timeout")
    if code == sqlite3.SQLITE_NOTADB:
        return LedgerCorrupt(
            f"{where}: the file is not a SQLite database ({text}). Check the path (--db "
            "or EVQ_DB); if it is your ledger, it is damaged: restore it from a backup")
    if code == sqlite3.SQLITE_CORRUPT:
        return LedgerCorrupt(
            f"{where}: the file is damaged ({text}). Restore it from a backup (evq export "
            "/ import), and run `evq verify` on what you restore")
    if code == sqlite3.SQLITE_IOERR:
        return LedgerIOError(f"{where}: the operating system reported an I/O error "
                             f"({text}); check the disk, then try again")
    if code == sqlite3.SQLITE_CANTOPEN:
        return cannot_open(path, where, text)
    if "no such table" in text or "no such column" in text:
        return LedgerSchemaError(
            f"{where}: {text}: the file is not a complete evq ledger (a table was "
            "dropped, or it is another program's database). Restore it from a backup, or "
            "give the right path")
    return LedgerError(f"{where}: {text}")


def cannot_open(path: str | Path, where: str, text: str = "unable to open database file"
                ) -> LedgerError:
    """Why SQLite could not open (or create) the file, from what the file system shows."""
    file = Path(path)
    if not file.parent.is_dir():
        return LedgerNotFound(f"{where}: its directory {file.parent} does not exist: create "
                              "it, or give another path (--db or EVQ_DB)")
    if file.is_dir():
        return LedgerNotFound(f"{where}: {file} is a directory, not a ledger file: give the "
                              "path of the file (--db or EVQ_DB)")
    if file.exists():
        return LedgerReadOnly(
            f"{where}: the file exists but cannot be opened for writing ({text}): evq needs "
            f"to write it and to create its -wal and -shm files in {file.parent}. Make the "
            "file and its directory writable (and the mount, if it is mounted read-only)")
    return LedgerReadOnly(f"{where}: the file cannot be created ({text}): the directory "
                          f"{file.parent} is not writable for this process")


def _size_limit_hit(path: str | Path) -> bool:
    """Whether a failed write met this process's file size limit (`ulimit -f`), which the
    OS reports as an I/O error (EFBIG), not as a full disk."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit == resource.RLIM_INFINITY:
        return False
    for suffix in ("", "-wal", "-journal"):
        try:
            if os.path.getsize(f"{path}{suffix}") + _LARGEST_WRITE > limit:
                return True
        except OSError:
            continue
    return False
