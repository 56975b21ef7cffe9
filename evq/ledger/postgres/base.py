"""What every part of the PostgreSQL engine shares: the ledger's server and schema, and
short-lived connections for the synchronous (audit) side. The engine reuses the SQLite
engine's sides where they only run named statements (see dialect.py); this base stands
in for the SQLite one beneath them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from ..records import Durability
from ..sqlite.base import EngineBase
from . import connection
from .dialect import Dialect
from .url import Target


class PgBase(EngineBase):
    """The server and schema of one PostgreSQL ledger."""

    def __init__(self, target: Target, *, busy_timeout: float = 10.0) -> None:
        self.target = target
        self.location = target.shown
        # The SQLite sides name the ledger in messages by `path`: here, the URL shown.
        self.path = Path(target.shown)
        self.busy_timeout = busy_timeout
        self.busy_timeout_ms = int(busy_timeout * 1000)
        self.durability = Durability.POWER  # every commit is durable on the server
        self.file_mode = 0

    @contextlib.contextmanager
    def reading(self, doing: str = "reading") -> Iterator[Dialect]:  # type: ignore[override]
        """A connection for one synchronous read; driver errors leave typed."""
        with connection.session(self.target, doing) as conn:
            yield conn

    @contextlib.contextmanager
    def _checked(self, doing: str = "reading") -> Iterator[Dialect]:
        """A connection to a complete ledger of this evq's schema version."""
        with self.reading(doing) as conn:
            connection.require_schema(conn, self.target)
            yield conn
