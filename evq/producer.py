"""Enqueue without an event loop: for Django, Flask, scripts and any thread.

`Context.sync()` gives a SyncProducer on the same ledger file. It validates with the
context's job definitions and writes through the same ledger operations as the async
path, so the events are exactly the same; workers in any process pick the jobs up.
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
from .ledger import connection, ops, seals, sql, stalls, trees
from .ledger.tx import Tx
from .ledger.wal import WalWatch

if TYPE_CHECKING:
    from .context import Context
    from .enqueueing import EnqueueRequest
    from .jobs import JobDefinition

T = TypeVar("T")


BUSY_TIMEOUT_MS = 10_000
NO_WAIT = sql.SET_BUSY_TIMEOUT.format(ms=0)
WAIT = sql.SET_BUSY_TIMEOUT.format(ms=BUSY_TIMEOUT_MS)


class SyncProducer:
    """Adds jobs from synchronous code. Thread-safe; use it as a context manager or call
    close(). Each call is one transaction: `BEGIN IMMEDIATE ... COMMIT`, or for a lone
    job one statement (`ops.enqueue_alone`)."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = connection.connect(
            ctx.path, durability=ctx.durability, busy_timeout_ms=BUSY_TIMEOUT_MS,
            check_same_thread=False, file_mode=ctx.file_mode)
        connection.migrate(self._conn)
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
                self._wal.close(self._conn, BUSY_TIMEOUT_MS)
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
        if self._ctx.definition(new.name).on_before_add is None:
            with self._lock:
                conn = self._conn
                if conn is None:
                    raise ContextClosed("this SyncProducer is closed")
                # The common case in one statement instead of four (see enqueue_alone),
                # which must not wait for the lock: its time is read before it.
                conn.execute(NO_WAIT)
                try:
                    written = ops.enqueue_alone(conn, new, self._ctx.clock.now(),
                                                self._last_seal)
                finally:
                    conn.execute(WAIT)
                if written:
                    self._wal.after_commit(conn, BUSY_TIMEOUT_MS, small=True)
                    return new.id
        return self._write([new], ops.enqueue)[0]

    def enqueue_many(self, requests: Iterable[EnqueueRequest | tuple[Any, ...]]) -> list[str]:
        """Add many jobs in one transaction: all of them or, on any bad one, none."""
        jobs = [job for chunk in prepared_chunks(self._ctx, requests) for job in chunk]
        return self._write(jobs, ops.enqueue) if jobs else []

    def enqueue_flow(self, flow: flows.FlowJob) -> trees.FlowNode:
        """Add a tree of jobs in one transaction (see `Context.enqueue_flow`)."""
        root = flows.plan(self._ctx, flow)
        return self._write(trees.jobs_of(root), lambda tx, _: trees.enqueue_tree(tx, root))

    def add_children(self, parent_id: str, children: Sequence[flows.FlowJob]
                     ) -> list[trees.FlowNode]:
        """Add children to a job that has not started (see `Context.add_children`)."""
        planned = flows.plan_children(self._ctx, children)
        return self._write([job for node in planned for job in trees.jobs_of(node)],
                           lambda tx, _: trees.add_children(tx, parent_id, planned))

    def _write(self, jobs: list[ops.NewJob], write: Callable[[Tx, list[ops.NewJob]], T]
               ) -> T:
        refused = refusals_now(self._ctx, jobs, "a SyncProducer")
        with self._lock:
            conn = self._conn
            if conn is None:
                raise ContextClosed("this SyncProducer is closed")
            asked = time.monotonic()
            conn.execute(sql.BEGIN_IMMEDIATE)
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
                conn.execute(sql.ROLLBACK)
                raise
            self._wal.after_commit(conn, BUSY_TIMEOUT_MS)
        if refused:
            raise rejected(jobs, refused, "nothing was added")
        return written
