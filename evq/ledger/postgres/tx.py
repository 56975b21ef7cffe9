"""A write transaction on a PostgreSQL ledger, as the shared operations see it (the
SQLite engine's `Tx`: append events, run named queries), with what PostgreSQL does
differently: the transaction holds the ledger's append lock before it reads anything, so
it hands out positions itself, gap-free and in commit order; and a writer that commits
with `commit_text` may hold appends back (`hold_back`): they are written in one statement
just before the next statement of the transaction, or with the seal in the commit's own
round trip, instead of a round trip each.

A refused append aborts the whole PostgreSQL transaction (SQLite undoes only the refused
statement): the operation fails with the typed refusal, and the writer redoes its batch
with a savepoint per operation (and nothing held back), so only that operation's writes
go."""

from __future__ import annotations

import json
import weakref
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
_HOLD_AT_MOST = 1000  # appends held back before they are written anyway (a long stream)


class NeedsLock(Exception):
    """A speculative transaction's operation read the ledger (or outgrew what is held
    back): it must run in a transaction that holds the append lock first."""


class _Flushing(Dialect):
    """The transaction's connection as operations see it: a statement first writes the
    appends held back, so that it sees them (and their fold)."""

    __slots__ = ("flush",)

    def __init__(self, raw: psycopg.Connection[Any], flush: Callable[[], None]) -> None:
        super().__init__(raw)
        # Weakly: the transaction holds this connection, and a cycle would keep a big
        # batch's events alive until the cyclic collector ran.
        self.flush = weakref.WeakMethod(flush)

    def execute(self, query: str, params: Iterable[Any] = ()) -> psycopg.Cursor[Any]:
        flush = self.flush()
        if flush is not None:
            flush()
        return super().execute(query, params)


class _NoStatements:
    """The connection of a speculative transaction: nothing is sent before its commit."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        raise NeedsLock


_NO_STATEMENTS: Any = _NoStatements()


class PgTx(Tx):
    """Appends events inside a transaction that holds the ledger's append lock; make it
    with `PgTx.locked`."""

    __slots__ = ("__weakref__", "held_back", "hold_back", "next_position", "unsettled")

    conn: Dialect  # type: ignore[assignment]

    def __init__(self, conn: Dialect, now: float, last_at: float | None,
                 next_position: int) -> None:
        super().__init__(_Flushing(conn.raw, self.flush), now, last_at)  # type: ignore[arg-type]
        self.next_position = next_position
        # Whether appends wait to be written until the next statement or the commit
        # (only for a writer that commits with `commit_text`), and those waiting, as
        # stored rows at the positions just before `next_position`.
        self.hold_back = False
        self.held_back: list[tuple[Any, ...]] = []
        # Whether any flow edge is open or failed (None: not read yet). Every job that
        # ends looks up its edge to a waiting parent; while no edge is unsettled, the
        # answer is known without a round trip. Only a `wait` event opens edges.
        self.unsettled: bool | None = None

    @classmethod
    def speculative_after(cls, clock_now: float, last: seals.LastSeal
                          ) -> PgTx:
        """A transaction that assumes the ledger's newest event is still `last`, the
        seal this writer committed last, and sends nothing until its commit: then
        `BEGIN`, the append lock, its events, its seal and `COMMIT` go in one round
        trip, with a check under the lock that refuses the whole text (nothing of it
        lands) if the newest event is not `last` any more (sql.BEGIN_LOCKED_IF_NEWEST). An operation
        that reads (or appends more than is held back) raises NeedsLock: it needs the
        ordinary transaction."""
        tx = cls(Dialect(_NO_STATEMENTS), max(clock_now, last.at), last.at,
                 last.position + 1)
        tx.hold_back = True
        return tx

    def one(self, query: str, params: Iterable[Any] = ()) -> Any:
        if query in _EDGE_LOOKUPS:
            if self.unsettled is None:
                self.unsettled = bool(scalar(self.conn.raw.execute(sql.ANY_UNSETTLED_EDGE)))
            if not self.unsettled:
                return None
        return super().one(query, params)

    @classmethod
    def locked(cls, conn: Dialect, clock_now: float) -> PgTx:  # type: ignore[override]
        """A transaction on `conn`, which holds the append lock: its time is the clock
        read after the lock, or the newest event's `at` if later."""
        return cls._after(conn, clock_now, conn.raw.execute(sql.NEWEST_EVENT).fetchone())

    @classmethod
    def _after(cls, conn: Dialect, clock_now: float, newest: Any) -> PgTx:
        """The transaction whose newest event so far is `newest` (position, at, ...)."""
        if newest is None:
            return cls(conn, clock_now, None, 1)
        last_at = float(newest[1])
        return cls(conn, max(clock_now, last_at), last_at, int(newest[0]) + 1)

    @classmethod
    def begin(cls, conn: Dialect, begin_newest: str, now: Callable[[], float],
              last: seals.LastSeal | None = None) -> PgTx:
        """Open a write transaction on `conn` that takes the append lock and reads the
        newest event and whether any flow edge is unsettled, in one round trip
        (`begin_newest`: sql.BEGIN_LOCKED_NEWEST for the ledger); `now()` is read once
        the lock is held. A newest event that is a seal (the end of every commit) is
        remembered in `last`, so the commit's seal chains to it without a query."""
        cursor = conn.raw.execute(begin_newest)
        cursor.nextset()  # past BEGIN, to the lock
        cursor.nextset()
        newest = cursor.fetchone()
        cursor.nextset()
        unsettled = bool(scalar(cursor))
        tx = cls._after(conn, now(), newest)
        if last is not None and newest is not None and newest[2] == seals.SEAL:
            last.position, last.at = int(newest[0]), float(newest[1])
            last.hash = str(json.loads(newest[3])["hash"])
        tx.unsettled = unsettled
        return tx

    def commit_text(self, notify_commit: str, last: seals.LastSeal | None = None
                    ) -> pgsql.SQL | pgsql.Composed:
        """Write what is held back, seal what this transaction appended and commit,
        notifying the ledger's channel, as one round trip (`notify_commit`:
        sql.NOTIFY_COMMIT for the ledger)."""
        row = self.seal_row(last)
        if row is None:
            return pgsql.SQL(sql.COMMIT)
        text = pgsql.SQL(sql.SEAL_THEN).format(*map(pgsql.Literal, row)) + pgsql.SQL(
            notify_commit)
        rows, self.held_back = self.held_back, []
        if not rows:
            return text
        first = self.next_position - len(rows)
        return pgsql.SQL(sql.APPEND_MANY_THEN).format(
            pgsql.Literal(first), pgsql.Literal(self.now), pgsql.Literal(dumps(rows))) + text

    def seal_row(self, last: seals.LastSeal | None = None
                 ) -> tuple[int, float, str, int] | None:
        # Finding the previous seal (when another writer wrote last) must not write the
        # held rows here, outside the commit's round trip and its refusal handling; no
        # seal is among them.
        held, self.held_back = self.held_back, []
        try:
            return super().seal_row(last)
        finally:
            self.held_back = held

    def flush(self) -> None:
        """Write the appends held back, in one statement."""
        rows, self.held_back = self.held_back, []
        if rows:
            self._write_many(self.next_position - len(rows), rows)

    def _write_many(self, first: int, rows: Sequence[tuple[Any, ...]]) -> None:
        try:
            self.conn.raw.execute(sql.APPEND_MANY, (first, self.now, dumps(rows)))
        except psycopg.Error as exc:
            refused = refusal_text(exc)
            if refused is None:
                raise
            event = _refused_event(exc, rows, first)
            raise refusal(refused, event[0], event[1], event[4]) from None

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
        if self.hold_back:
            if len(self.held_back) >= _HOLD_AT_MOST:
                self.flush()
            self.held_back.append((kind, job_id, queue, job, attempt, worker, stored))
        else:
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
        if self.hold_back:
            if len(self.held_back) >= _HOLD_AT_MOST:
                self.flush()
            self.held_back.extend(rows)
        else:
            self._write_many(first_position, rows)
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


def _refused_event(exc: psycopg.Error, events: Sequence[tuple[Any, ...]], first: int
                   ) -> tuple[Any, ...]:
    """Which of a statement's events (the first at position `first`; each a NewEvent or
    a stored row, which begin alike) was refused: the trigger names its position; a job
    id's uniqueness names the id."""
    at = refused_position(exc)
    if at is not None and 0 <= at - first < len(events):
        return events[at - first]
    detail = exc.diag.message_detail or ""
    for event in events:
        if event[1] is not None and f"=({event[1]})" in detail:
            return event
    return events[0]
