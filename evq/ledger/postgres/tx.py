"""A write transaction on a PostgreSQL ledger, as the shared operations see it (the
SQLite engine's `Tx`: append events, run named queries), with what PostgreSQL does
differently: the transaction holds the ledger's append lock before it reads anything, so
it hands out positions itself, gap-free and in commit order; and an append goes through
A refused append aborts the whole PostgreSQL transaction (SQLite undoes only the refused
statement): the operation fails with the typed refusal, and the writer redoes its batch
with a savepoint per operation, so only that operation's writes go."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg
from psycopg import errors as pg
from psycopg import sql as pgsql

from ...codec import dumps
from ..records import Committed
from ..sqlite import seals
from ..sqlite import sql as named
from ..sqlite.tx import NewEvent, Tx, refusal, stored_rows
from . import sql
from .dialect import Dialect, scalar

_committed = Committed._make
_EDGE_LOOKUPS = frozenset((named.OPEN_EDGE_OF_CHILD, named.FAILED_EDGE_OF_CHILD))


class PgTx(Tx):
    """Appends events inside a transaction that holds the ledger's append lock; make it
    with `PgTx.locked`."""

    __slots__ = ("next_position", "unsettled")

    conn: Dialect  # type: ignore[assignment]

    def __init__(self, conn: Dialect, now: float, last_at: float | None,
                 next_position: int) -> None:
        super().__init__(conn, now, last_at)  # type: ignore[arg-type]
        self.next_position = next_position
        # Whether any flow edge is open or failed (None: not read yet). Every job that
        # ends looks up its edge to a waiting parent; while no edge is unsettled, the
        # answer is known without a round trip. Only a `wait` event opens edges.
        self.unsettled: bool | None = None

    def one(self, query: str, params: Iterable[Any] = ()) -> Any:
        if query in _EDGE_LOOKUPS:
            if self.unsettled is None:
                self.unsettled = bool(scalar(self.conn.raw.execute(sql.ANY_UNSETTLED_EDGE)))
            if not self.unsettled:
                return None
        return super().one(query, params)

    @classmethod
    def locked(cls, conn: Dialect, clock_now: float,  # type: ignore[override]
               newest: Any = None) -> PgTx:
        """A transaction on `conn`, which holds the append lock: its time is the clock
        read after the lock, or the newest event's `at` if later. `newest` is the cursor
        that read the newest event under the lock (see `begin`), or None to read it."""
        row = (conn.raw.execute(sql.NEWEST_EVENT) if newest is None else newest).fetchone()
        if row is None:
            return cls(conn, clock_now, None, 1)
        last_at = float(row[1])
        return cls(conn, max(clock_now, last_at), last_at, int(row[0]) + 1)

    @classmethod
    def begin(cls, conn: Dialect, begin_newest: str, now: Callable[[], float]) -> PgTx:
        """Open a write transaction on `conn` that takes the append lock and reads the
        newest event, in one round trip (`begin_newest`: sql.BEGIN_LOCKED_NEWEST for
        the ledger); `now()` is read once the lock is held."""
        cursor = conn.raw.execute(begin_newest)
        while cursor.nextset():  # BEGIN, the lock, then the newest event
            pass
        return cls.locked(conn, now(), cursor)

    def commit_text(self, notify_commit: str, last: seals.LastSeal | None = None
                    ) -> pgsql.SQL | pgsql.Composed:
        """Seal what this transaction appended and commit, notifying the ledger's channel,
        as one round trip (`notify_commit`: sql.NOTIFY_COMMIT for the ledger)."""
        row = self.seal_row(last)
        if row is None:
            return pgsql.SQL(sql.COMMIT)
        return pgsql.SQL(sql.SEAL_THEN).format(*map(pgsql.Literal, row)) + pgsql.SQL(
            notify_commit)

    def forget_after(self, mark: int) -> None:
        if mark < len(self.appended):
            self.next_position = self.appended[mark][0]
        super().forget_after(mark)

    def seal(self, last: seals.LastSeal | None = None) -> None:
        super().seal(last)
        if self.appended:
            self.next_position = self.appended[-1][0] + 1

    def append(
        self,
        kind: str,
        job_id: str | None = None,
        queue: str | None = None,
        job: str | None = None,
        attempt: int | None = None,
        worker: str | None = None,
        data: dict[str, Any] | None = None,
        text: str | None = None,
    ) -> int:
        body = data if data is not None else {}
        stored = text if text is not None else dumps(body) if body else "{}"
        position = self.next_position
        try:
            self.conn.raw.execute(sql.APPEND, (
                position, self.now, kind, job_id, queue, job, attempt, worker, stored))
        except psycopg.Error as exc:
            refused = refusal_text(exc)
            if refused is None:
                raise
            raise refusal(refused, kind, job_id, attempt) from None
        self.next_position = position + 1
        if kind == "wait":
            self.unsettled = True
        self.record(position, kind, job_id, queue, job, attempt, worker, body, stored)
        return position

    def append_many(self, events: Sequence[NewEvent]) -> None:
        """Append many events in one statement; all or none (a refused one refuses the
        lot, and is named)."""
        if not events:
            return
        first_position = self.next_position
        rows = stored_rows(events)
        try:
            self.conn.raw.execute(sql.APPEND_MANY, (first_position, self.now, dumps(rows)))
        except psycopg.Error as exc:
            refused = refusal_text(exc)
            if refused is None:
                raise
            event = _refused_event(exc, events, first_position)
            raise refusal(refused, event[0], event[1], event[4]) from None
        self.next_position = first_position + len(events)
        if any(event[0] == "wait" for event in events):
            self.unsettled = True
        self.record_many(first_position, events, rows)


def refusal_text(exc: psycopg.Error) -> str | None:
    """The refusal a trigger (or the job id's uniqueness) made, as the SQLite engine's
    text, or None if `exc` is not a refusal."""
    if isinstance(exc, pg.RaiseException):
        return exc.diag.message_primary or str(exc)
    if isinstance(exc, pg.UniqueViolation) and exc.diag.constraint_name == "evq_jobs_pkey":
        return "UNIQUE constraint failed: evq_jobs.id"
    return None


def refused_position(exc: psycopg.Error) -> int | None:
    """The position of the event a trigger refused (its DETAIL), if it said."""
    detail = exc.diag.message_detail or ""
    return int(detail) if detail.isdigit() else None


def _refused_event(exc: psycopg.Error, events: Sequence[NewEvent], first: int) -> NewEvent:
    """Which of a statement's events (the first at position `first`) was refused: the
    trigger names its position; a job id's uniqueness names the id."""
    at = refused_position(exc)
    if at is not None and 0 <= at - first < len(events):
        return events[at - first]
    detail = exc.diag.message_detail or ""
    for event in events:
        if event[1] is not None and f"=({event[1]})" in detail:
            return event
    return events[0]
