"""Driver errors mapped to evq's typed errors, in one place.

Whatever the SQLite driver raises on a ledger file (disk full, read-only, locked past the
busy timeout, damaged pages, a table missing) becomes the `evq.LedgerError` subclass
that says what happened, naming the file and what to do. Callers that catch
`sqlite3.Error` hand it to `ledger_error` and raise what it returns."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..errors import (
    LedgerCorrupt,
    LedgerError,
    LedgerFull,
    LedgerIOError,
    LedgerLocked,
    LedgerNotFound,
    LedgerReadOnly,
    LedgerSchemaError,
)


def ledger_error(exc: sqlite3.Error, path: str | Path, doing: str = "using",
                 busy_timeout: float | None = None) -> LedgerError:
    """The typed error for a driver error raised while `doing` something to `path`."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    text = str(exc)
    where = f"{doing} the ledger {path}"
    if code == sqlite3.SQLITE_FULL:
        return LedgerFull(f"{where}: the disk is full (or a size limit was reached); "
                          "nothing was written. Free some space, then try again")
    if code == sqlite3.SQLITE_READONLY:
        return LedgerReadOnly(
            f"{where}: the file is read-only for this process. evq writes the file and "
            f"its -wal and -shm files beside it: make {path} and its directory writable")
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        waited = "" if busy_timeout is None else f" (busy_timeout {busy_timeout:g} s)"
        return LedgerLocked(
            f"{where}: another connection held the write lock for longer than evq "
            f"waits{waited}; nothing was written. Find what holds the file open in a long "
            "transaction, or raise busy_timeout")
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return LedgerCorrupt(
            f"{where}: the file is damaged or is not a SQLite database ({text}). Check "
            "the path; if it is your ledger, restore it from a backup (evq export / "
            "import), and run `evq verify` on what you restore")
    if code == sqlite3.SQLITE_IOERR:
        return LedgerIOError(f"{where}: the operating system reported an I/O error "
                             f"({text}); check the disk, then try again")
    if code == sqlite3.SQLITE_CANTOPEN:
        return LedgerNotFound(
            f"{where}: the file cannot be opened ({text}): check that its directory "
            "exists and is writable, or give another path (--db or EVQ_DB)")
    if "no such table" in text or "no such column" in text:
        return LedgerSchemaError(
            f"{where}: {text}: the file is not a complete evq ledger (a table was "
            "dropped, or it is another program's database). Restore it from a backup, or "
            "give the right path")
    return LedgerError(f"{where}: {text}")
