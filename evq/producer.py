"""Enqueue without an event loop: for Django, Flask, scripts and any thread.

`Context.sync()` gives a SyncProducer on the same ledger file. It validates with the
context's job definitions and writes through the same ledger operations as the async
path, so the events are exactly the same; workers in any process pick the jobs up.

A call waits at most the context's `busy_timeout` for another connection's lock in
total, and a storage failure is raised as the typed `evq.LedgerError` that says why
(nothing of the call was written).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import flows
from .enqueueing import prepared_chunks, refusals_now, rejected
from .errors import ContextClosed
from .ledger import records
from .ledger.sqlite import connection, ops, seals, sql, stalls, trees
from .ledger.sqlite.failures import ledger_error
from .ledger.sqlite.tx import Tx
from .ledger.sqlite.wal import WalWatch

if TYPE_CHECKING:
    from .context import Context
    from .enqueueing import EnqueueRequest
    from .jobs import JobDefinition

T = TypeVar("T")
_NO_WAIT = sql.SET_BUSY_TIMEOUT.format(ms=0)


class SyncProducer:
    """Adds jobs from synchronous code. Thread-safe; use it as a context manager or call
    close(). Each call is one transaction: `BEGIN IMMEDIATE ... COMMIT`, or for a lone
    job one statement (`ops.enqueue_alone`)."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._busy_ms = ctx.busy_timeout_ms
        conn = connection.connect(ctx.path, durability=ctx.durability,
                                  busy_timeout_ms=self._busy_ms, check_same_thread=False,
                                  file_mode=ctx.file_mode)
        try:
            connection.migrate(conn)
            # The connection never waits for the lock unless asked (see _begin): a
            # one-statement enqueue must take it at once, at the time it read.
            conn.execute(_NO_WAIT)
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn
        self._wal = WalWatch(ctx.path)
        self._last_seal = seals.LastSeal()

    def __enter__(self) -> SyncProducer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._wal.close(self._conn, self._busy_ms)
                self._conn.close()
                self._conn = None

    def enqueue(
        self,
        job: str | JobDefinition[Any],
        payload: Any = None,
        *,
        delay: float | None = None,
        run_at: datetime | str | float | None = None,
        priority: int | None = None,
        key: str | None = None,
        group: str | None = None,
    ) -> str:
        """Add a job; returns its id once committed (see `Context.enqueue`)."""
        new = self._ctx.prepare(job, payload, delay=delay, run_at=run_at, priority=priority,
                                key=key, group=group)
        started = time.monotonic()
        if self._ctx.definition(new.name).on_before_add is None:
            with self._lock:
                conn = self._conn
                if conn is None:
                    raise ContextClosed("this SyncProducer is closed")
                # The common case in one statement instead of four (see enqueue_alone),
                # which must not wait for the lock (the connection's standing setting):
                # its time is read before it.
                try:
                    alone = ops.enqueue_alone(conn, new, self._ctx.clock.now(),
                                              self._last_seal)
                except sqlite3.Error as exc:
                    raise self._failed(exc) from exc
                if alone:
                    self._wal.after_commit(conn, 0, small=True)
                    return new.id
        return self._write([new], ops.enqueue, started)[0]

    def enqueue_many(self, requests: Iterable[EnqueueRequest | tuple[Any, ...]]) -> list[str]:
        """Add many jobs in one transaction: all of them or, on any bad one, none."""
        jobs = [job for chunk in prepared_chunks(self._ctx, requests) for job in chunk]
        return self._write(jobs, ops.enqueue) if jobs else []

    def enqueue_flow(self, flow: flows.FlowJob) -> records.FlowNode:
        """Add a tree of jobs in one transaction (see `Context.enqueue_flow`)."""
        root = flows.plan(self._ctx, flow)
        return self._write(trees.jobs_of(root), lambda tx, _: trees.enqueue_tree(tx, root))

    def add_children(self, parent_id: str, children: Sequence[flows.FlowJob]
                     ) -> list[records.FlowNode]:
        """Add children to a job that has not started (see `Context.add_children`)."""
        planned = flows.plan_children(self._ctx, children)
        return self._write([job for node in planned for job in trees.jobs_of(node)],
                           lambda tx, _: trees.add_children(tx, parent_id, planned))

    def _write(self, jobs: list[records.NewJob], write: Callable[[Tx, list[records.NewJob]], T],
               started: float | None = None) -> T:
        refused = refusals_now(self._ctx, jobs, "a SyncProducer")
        with self._lock:
            conn = self._conn
            if conn is None:
                raise ContextClosed("this SyncProducer is closed")
            try:
                asked = time.monotonic()
                self._begin(conn, started)
                try:
                    tx = Tx.locked(conn, self._ctx.clock.now())
                    if time.monotonic() - asked >= stalls.STALL:
                        stalls.record(tx, time.monotonic() - asked)
                    if refused:
                        ops.reject(tx, [j for j in jobs if j.id in refused], refused)
                    else:
                        written = write(tx, jobs)
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
        if refused:
            raise rejected(jobs, refused, "nothing was added")
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
        return ledger_error(exc, self._ctx.path, "writing to", self._busy_ms / 1000)
