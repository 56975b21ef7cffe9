"""The producer side of the SQLite engine: writes made without the runtime's writer.

`producer()` opens a synchronous session on its own connection (for `Context.sync()`):
each call is one `BEGIN IMMEDIATE ... COMMIT`, or for a lone job one statement
(`ops.enqueue_alone`), waiting at most `busy_timeout` for another connection's lock in
total. `enqueue_in` writes inside a caller's own open transaction on a plain `sqlite3`
connection, so the job commits or rolls back with the caller's rows.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from ...clock import Clock
from ...errors import ContextClosed, InvalidInput, LedgerReadOnly
from ..records import FlowNode, NewJob, PlannedNode
from . import connection, ops, seals, sql, stalls, trees
from .base import EngineBase
from .failures import ledger_error
from .tx import Tx
from .wal import WalWatch

T = TypeVar("T")
_NO_WAIT = sql.SET_BUSY_TIMEOUT.format(ms=0)


class ProducerSide(EngineBase):
    """Synchronous producers and enqueue in a caller's transaction (see
    evq.ledger.interface.Ledger)."""

    def producer(self, clock: Clock) -> SqliteProducer:
        return SqliteProducer(self, clock)

    def check_callers_transaction(self, conn: object) -> None:
        if not isinstance(conn, sqlite3.Connection):
            kind = f"{type(conn).__module__}.{type(conn).__qualname__}"
            raise InvalidInput(
                f"enqueue_in takes a plain sqlite3.Connection open on {self.path}, got a "
                f"{kind}" + (": with aiosqlite, use `await ctx.enqueue(...)`, or enqueue_in "
                             "on a sqlite3 connection of your own" if "aiosqlite" in kind
                             else ""))
        try:
            in_transaction = conn.in_transaction
        except sqlite3.ProgrammingError:
            raise InvalidInput(
                "the connection given to enqueue_in is closed: enqueue on an open "
                "connection, inside your transaction") from None
        if not in_transaction:
            raise InvalidInput(
                "enqueue_in needs a transaction that is open on `conn`: write your own "
                "rows first (or execute BEGIN), then enqueue, then commit")
        try:
            files = {row[2] for row in conn.execute(sql.DATABASE_LIST) if row[1] == "main"}
        except sqlite3.Error as exc:
            raise ledger_error(exc, self.path, "enqueueing in") from exc
        if str(self.path.resolve()) not in {str(Path(f).resolve()) for f in files if f}:
            raise InvalidInput(
                f"the connection is not on this context's ledger {self.path}; open it "
                "on the same file")

    def enqueue_in(self, conn: object, job: NewJob, reasons: Mapping[str, str],
                   now: Callable[[], float]) -> None:
        if not isinstance(conn, sqlite3.Connection):  # the rest checked by the caller
            self.check_callers_transaction(conn)
            return
        try:
            # Take the write lock first (the transaction may have only read so far), so
            # that the time is read while no other commit can land before this one.
            # The schema is checked only then: a read before the lock would start a
            # snapshot that another process's commit can make impossible to write from.
            try:
                conn.execute(sql.TAKE_WRITE_LOCK)
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
            connection.require_version(conn, self.path)
            tx = Tx.locked(conn, now())
            conn.execute(sql.SAVEPOINT)
            try:
                if reasons:
                    ops.reject(tx, (job,), reasons)
                else:
                    ops.enqueue(tx, (job,))
                tx.seal()
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled it all back already
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute(sql.ROLLBACK_TO)
                        conn.execute(sql.RELEASE)
                raise
            conn.execute(sql.RELEASE)
        except sqlite3.Error as exc:
            error = ledger_error(exc, self.path, "enqueueing in",
                                 connection.busy_timeout(conn))
            if isinstance(error, LedgerReadOnly):
                error = LedgerReadOnly(f"{error}; or your connection is read-only (opened "
                                       "with mode=ro, or query_only): enqueue_in writes "
                                       "through it")
            raise error from exc


    async def enqueue_in_async(self, conn: object, job: NewJob, reasons: Mapping[str, str],
                               now: Callable[[], float]) -> None:
        raise InvalidInput(
            "enqueue_in_async is for PostgreSQL ledgers (a psycopg AsyncConnection); on "
            f"the SQLite ledger {self.path}, use ctx.enqueue_in with a sqlite3 connection "
            "on the same file")


class SqliteProducer:
    """A producer's own connection to the file (see evq.ledger.records.ProducerSession).
    Thread-safe: one call at a time holds the connection."""

    def __init__(self, ledger: EngineBase, clock: Clock) -> None:
        self._path = ledger.path
        self._clock = clock
        self._lock = threading.Lock()
        self._busy_ms = ledger.busy_timeout_ms
        conn = connection.connect(ledger.path, durability=ledger.durability,
                                  busy_timeout_ms=self._busy_ms, check_same_thread=False,
                                  file_mode=ledger.file_mode)
        try:
            connection.migrate(conn)
            # The connection never waits for the lock unless asked (see _begin): a
            # one-statement enqueue must take it at once, at the time it read.
            conn.execute(_NO_WAIT)
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn
        self._wal = WalWatch(ledger.path)
        self._last_seal = seals.LastSeal()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._wal.close(self._conn, self._busy_ms)
                self._conn.close()
                self._conn = None

    def enqueue(self, jobs: Sequence[NewJob]) -> list[str]:
        if len(jobs) != 1:
            return self._write(lambda tx: ops.enqueue(tx, jobs))
        started = time.monotonic()
        with self._lock:
            conn = self._open()
            # The common case in one statement instead of four (see enqueue_alone),
            # which must not wait for the lock (the connection's standing setting): its
            # time is read before it.
            try:
                alone = ops.enqueue_alone(conn, jobs[0], self._clock.now(), self._last_seal)
            except sqlite3.Error as exc:
                raise self._failed(exc) from exc
            if alone:
                self._wal.after_commit(conn, 0, small=True)
                return [jobs[0].id]
            return self._write_locked(conn, lambda tx: ops.enqueue(tx, jobs), started)

    def reject(self, jobs: Sequence[NewJob], reasons: Mapping[str, str]) -> None:
        self._write(lambda tx: ops.reject(tx, jobs, reasons))

    def enqueue_tree(self, root: PlannedNode) -> FlowNode:
        return self._write(lambda tx: trees.enqueue_tree(tx, root))

    def add_children(self, parent_id: str, children: Sequence[PlannedNode]
                     ) -> list[FlowNode]:
        return self._write(lambda tx: trees.add_children(tx, parent_id, tuple(children)))

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ContextClosed("this SyncProducer is closed")
        return self._conn

    def _write(self, write: Callable[[Tx], T]) -> T:
        with self._lock:
            return self._write_locked(self._open(), write, None)

    def _write_locked(self, conn: sqlite3.Connection, write: Callable[[Tx], T],
                      started: float | None) -> T:
        try:
            asked = time.monotonic()
            self._begin(conn, started)
            try:
                tx = Tx.locked(conn, self._clock.now())
                if time.monotonic() - asked >= stalls.STALL:
                    stalls.record(tx, time.monotonic() - asked)
                written = write(tx)
                tx.seal(self._last_seal)
                conn.execute(sql.COMMIT)
            except BaseException:
                self._last_seal = seals.LastSeal()
                if conn.in_transaction:
                    conn.execute(sql.ROLLBACK)
                raise
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        self._wal.after_commit(conn, 0)
        return written

    def _begin(self, conn: sqlite3.Connection, started: float | None) -> None:
        """BEGIN IMMEDIATE, waiting for the lock at most what is left of busy_timeout
        since the call `started` (a one-statement enqueue that found the file busy has
        already been counted), then back to not waiting."""
        left = self._busy_ms
        if started is not None:
            left = max(0, left - int((time.monotonic() - started) * 1000))
        conn.execute(sql.SET_BUSY_TIMEOUT.format(ms=left))
        try:
            conn.execute(sql.BEGIN_IMMEDIATE)
        finally:
            conn.execute(_NO_WAIT)

    def _failed(self, exc: sqlite3.Error) -> Exception:
        return ledger_error(exc, self._path, "writing to", self._busy_ms / 1000)
