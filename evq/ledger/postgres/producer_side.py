"""The producer side of the PostgreSQL engine: writes made without the runtime's writer.

`producer()` opens a synchronous session on its own connection (for `Context.sync()`),
each call one transaction under the ledger's append lock. `enqueue_in` writes inside a
caller's own open transaction on a psycopg connection, so the job commits or rolls back
with the caller's rows; it takes the append lock, which the caller's transaction then
holds until it commits (keep such transactions short)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import pq

from ...clock import Clock
from ...errors import ContextClosed, InvalidInput
from ..records import FlowNode, NewJob, PlannedNode
from ..sqlite import ops, seals, trees
from ..sqlite.producer_side import ProducerSide
from . import connection, failures, sql
from .base import PgBase
from .dialect import Dialect, scalar
from .tx import PgTx
from .url import Target

T = TypeVar("T")


class PgProducerSide(ProducerSide, PgBase):
    """Synchronous producers and enqueue in a caller's psycopg transaction."""

    def producer(self, clock: Clock) -> PgProducer:  # type: ignore[override]
        return PgProducer(self.target, clock, self.busy_timeout_ms)

    def check_callers_transaction(self, conn: object) -> None:
        if not isinstance(conn, psycopg.Connection):
            kind = f"{type(conn).__module__}.{type(conn).__qualname__}"
            raise InvalidInput(
                f"enqueue_in takes a psycopg.Connection (psycopg 3) on the ledger's "
                f"database {self.target.shown}, got a {kind}")
        _check_transaction(conn.closed, conn.info.transaction_status)
        try:
            _check_ledger(conn.execute(sql.LEDGER_IN_SCHEMA, (
                f"{self.target.schema}.evq_meta",)).fetchone(), self.target)
        except psycopg.Error as exc:
            raise failures.ledger_error(exc, self.target.shown, "enqueueing in") from None

    def enqueue_in(self, conn: object, job: NewJob, reasons: Mapping[str, str],
                   now: Callable[[], float]) -> None:
        if not isinstance(conn, psycopg.Connection):  # the rest checked by the caller
            self.check_callers_transaction(conn)
            return
        try:
            _enqueue_in(conn, self.target, job, reasons, now)
        except psycopg.Error as exc:
            raise failures.ledger_error(exc, self.target.shown, "enqueueing in") from None

    async def enqueue_in_async(self, conn: object, job: NewJob, reasons: Mapping[str, str],
                               now: Callable[[], float]) -> None:
        if not isinstance(conn, psycopg.AsyncConnection):
            kind = f"{type(conn).__module__}.{type(conn).__qualname__}"
            raise InvalidInput(
                f"enqueue_in_async takes a psycopg.AsyncConnection on the ledger's database "
                f"{self.target.shown}, got a {kind}" + (
                    " (a sync connection: use ctx.enqueue_in)"
                    if isinstance(conn, psycopg.Connection) else ""))
        _check_transaction(conn.closed, conn.info.transaction_status)
        bridge = _LoopConnection(conn, asyncio.get_running_loop())
        try:
            cursor = await conn.execute(sql.LEDGER_IN_SCHEMA, (f"{self.target.schema}.evq_meta",))
            _check_ledger(await cursor.fetchone(), self.target)
        except psycopg.Error as exc:
            raise failures.ledger_error(exc, self.target.shown, "enqueueing in") from None
        try:
            # The shared operations are synchronous: they run on a thread, each of their
            # statements sent back to this loop, on the caller's connection.
            await asyncio.to_thread(_enqueue_in, bridge, self.target, job, reasons, now)
        except psycopg.Error as exc:
            raise failures.ledger_error(exc, self.target.shown, "enqueueing in") from None


def _check_transaction(closed: bool, status: pq.TransactionStatus) -> None:
    if closed:
        raise InvalidInput(
            "the connection given to enqueue_in is closed: enqueue on an open "
            "connection, inside your transaction")
    if status == pq.TransactionStatus.INERROR:
        raise InvalidInput(
            "the transaction on the connection given to enqueue_in has already "
            "failed: roll it back, then try again")
    if status != pq.TransactionStatus.INTRANS:
        raise InvalidInput(
            "enqueue_in needs a transaction that is open on `conn`: use `with "
            "conn.transaction():` (or a connection that is not in autocommit mode) "
            "and write your own rows first, then enqueue, then commit")


def _check_ledger(found: Any, target: Target) -> None:
    """Refuse a connection whose database has no ledger in the target's schema (`found`:
    its LEDGER_IN_SCHEMA row)."""
    if found is None or found[0] is None:
        raise InvalidInput(
            f"the connection's database has no evq ledger in schema {target.schema!r}: "
            f"open it on the database of {target.shown}, or run `evq migrate` there "
            "first")


def _enqueue_in(conn: Any, target: Target, job: NewJob, reasons: Mapping[str, str],
                now: Callable[[], float]) -> None:
    """Enqueue (or reject) `job` inside the transaction open on `conn` (a psycopg
    connection, or one driven from a thread), leaving its search_path as it was."""
    previous = scalar(conn.execute(sql.SHOW_SEARCH_PATH))
    conn.execute(sql.SET_LOCAL_SEARCH_PATH, (target.schema,))
    try:
        # The append lock first: positions are handed out in commit order, so this
        # transaction writes after every commit before it and before any after it. Its
        # time is read under the lock.
        conn.execute(sql.LOCK_APPENDS, (target.lock_key,))
        dialect = Dialect(conn)
        connection.require_schema(dialect, target)
        tx = PgTx.locked(dialect, now())
        conn.execute(sql.SAVEPOINT)
        try:
            if reasons:
                ops.reject(tx, (job,), reasons)
            else:
                ops.enqueue(tx, (job,))
            tx.seal()
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                conn.execute(sql.ROLLBACK_TO)
                conn.execute(sql.RELEASE)
            raise
        conn.execute(sql.RELEASE)
        conn.execute(sql.NOTIFY_ON_COMMIT, (sql.channel(target.schema),))
    finally:
        if conn.info.transaction_status == pq.TransactionStatus.INTRANS:
            conn.execute(sql.SET_LOCAL_SEARCH_PATH, (previous,))


class _Fetched:
    """A statement's rows, fetched on the event loop, read from the thread."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class _LoopConnection:
    """A caller's psycopg AsyncConnection, as a synchronous connection for a thread: each
    statement runs on the connection's event loop, which awaits that thread meanwhile."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], loop: asyncio.AbstractEventLoop
                 ) -> None:
        self._conn = conn
        self._loop = loop
        self.info = conn.info
        self.raw = self

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def execute(self, query: Any, params: Any = None) -> _Fetched:
        return asyncio.run_coroutine_threadsafe(self._run(query, params), self._loop
                                                ).result()

    async def _run(self, query: Any, params: Any) -> _Fetched:
        cursor = await self._conn.execute(query, params)
        rows = await cursor.fetchall() if cursor.description is not None else []
        return _Fetched(list(rows), cursor.rowcount)


class PgProducer:
    """A producer's own connection to the ledger (see records.ProducerSession); each call
    one transaction. Thread-safe: one call at a time holds the connection. A dropped
    connection fails that call with LedgerUnavailable; the next connects again."""

    def __init__(self, target: Target, clock: Clock, busy_timeout_ms: int) -> None:
        self._target = target
        self._busy_timeout_ms = busy_timeout_ms
        self._clock = clock
        self._lock = threading.Lock()
        connection.migrate(target)
        self._conn: Dialect | None = connection.connect(target, "writing to",
                                                        busy_timeout_ms)
        self._closed = False
        self._last_seal = seals.LastSeal()
        self._begin = sql.BEGIN_LOCKED_NEWEST.format(key=target.lock_key)
        self._commit = sql.NOTIFY_COMMIT.format(channel=sql.channel(target.schema))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def enqueue(self, jobs: Sequence[NewJob]) -> list[str]:
        return self._write(lambda tx: ops.enqueue(tx, jobs))

    def reject(self, jobs: Sequence[NewJob], reasons: Mapping[str, str]) -> None:
        self._write(lambda tx: ops.reject(tx, jobs, reasons))

    def enqueue_tree(self, root: PlannedNode) -> FlowNode:
        return self._write(lambda tx: trees.enqueue_tree(tx, root))

    def add_children(self, parent_id: str, children: Sequence[PlannedNode]
                     ) -> list[FlowNode]:
        return self._write(lambda tx: trees.add_children(tx, parent_id, tuple(children)))

    def _write(self, write: Callable[[PgTx], T]) -> T:
        with self._lock:
            if self._closed:
                raise ContextClosed("this SyncProducer is closed")
            if self._conn is None:
                self._conn = connection.connect(self._target, "writing to",
                                                self._busy_timeout_ms)
            conn = self._conn
            try:
                return write_locked(conn, write, self._clock.now, self._begin,
                                    self._commit, self._last_seal)
            except BaseException as exc:
                self._last_seal = seals.LastSeal()
                if failures.is_disconnect(exc) or conn.raw.closed:
                    self._conn = None
                    with contextlib.suppress(Exception):
                        conn.close()
                if isinstance(exc, psycopg.Error):
                    raise failures.ledger_error(exc, self._target.shown,
                                                "writing to") from None
                raise


def write_locked(conn: Dialect, write: Callable[[PgTx], T], now: Callable[[], float],
                 begin: str, commit: str, last: seals.LastSeal | None = None) -> T:
    """`write` in one transaction of its own under the append lock, sealed, committed
    (and the ledger's channel notified); rolled back if anything raises. `begin` is
    the ledger's sql.BEGIN_LOCKED_NEWEST, `commit` its sql.NOTIFY_COMMIT."""
    raw = conn.raw
    try:
        tx = PgTx.begin(conn, begin, now, last)
        written = write(tx)
        raw.execute(tx.commit_text(commit, last))
    except BaseException:
        if not raw.closed and conn.in_transaction:
            with contextlib.suppress(psycopg.Error):
                raw.execute(sql.ROLLBACK)
        raise
    return written

