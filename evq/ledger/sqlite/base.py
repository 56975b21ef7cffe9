"""What every part of the SQLite engine shares: the file, its settings, and short-lived
connections for the synchronous (audit) side, with driver errors mapped on the way out."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from ... import files
from ..records import Durability
from . import connection
from .failures import ledger_error


class EngineBase:
    """The file and settings of one SQLite ledger."""

    def __init__(self, path: Path, *, busy_timeout: float = 10.0,
                 durability: Durability | str = Durability.PROCESS,
                 file_mode: int | None = None) -> None:
        self.path = path
        self.location = str(path)
        self.busy_timeout = busy_timeout
        self.busy_timeout_ms = int(busy_timeout * 1000)
        self.durability = Durability(durability)
        self.file_mode = files.FILE_MODE if file_mode is None else file_mode

    @contextlib.contextmanager
    def reading(self, doing: str = "reading") -> Iterator[sqlite3.Connection]:
        """A read-only connection for one synchronous read; driver errors leave as the
        typed LedgerError that says what happened."""
        conn = connection.connect(self.path, read_only=True,
                                  busy_timeout_ms=self.busy_timeout_ms)
        try:
            yield conn
        except sqlite3.Error as exc:
            raise ledger_error(exc, self.path, doing, self.busy_timeout) from exc
        finally:
            conn.close()
