"""The audit side of the PostgreSQL engine: the SQLite engine's reads (the same named
statements, see dialect.py), each on a short-lived connection of its own, plus what
PostgreSQL does its own way: following new events, and which errors are the driver's."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import psycopg

from ...errors import EvqError
from ...events import Event
from ..audit_records import StorageSize
from ..sqlite import sql as named
from ..sqlite.audit_side import AuditSide, _events_after
from . import sql
from .base import PgBase
from .dialect import Dialect, scalar
from .failures import ledger_error


class PgAuditSide(AuditSide, PgBase):
    """Reads for people and tools, on PostgreSQL."""

    @contextlib.contextmanager
    def _checked(self, doing: str = "reading") -> Iterator[Dialect]:  # type: ignore[override]
        with PgBase._checked(self, doing) as conn:
            yield conn

    def typed_error(self, exc: BaseException) -> EvqError | None:
        if not isinstance(exc, psycopg.Error):
            return None
        return ledger_error(exc, self.target.shown, "using")

    def storage_size(self) -> StorageSize:
        with self._checked() as conn:
            return StorageSize(int(scalar(conn.raw.execute(sql.SCHEMA_BYTES))), None)

    def follow(self, after: int, poll: float) -> Iterator[Event]:
        # Each poll is one indexed read of the newest position: an idle ledger costs
        # one tiny statement per poll.
        with self._checked() as conn:
            seen = None
            while True:
                head = int(scalar(conn.execute(named.HEAD_POSITION)))
                if head != seen:
                    seen = head
                    for event in _events_after(conn, after):  # type: ignore[arg-type]
                        after = event.position
                        yield event
                time.sleep(poll)
