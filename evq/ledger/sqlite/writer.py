"""The process's one writer: group commit on a dedicated thread.

Coroutines hand it operations (functions of a `Tx`); it runs every operation waiting at
that moment in one `BEGIN IMMEDIATE ... COMMIT`, each inside its own savepoint so that a
refused operation (say, a fenced report) leaves the others intact, then resolves each
caller's future and hands the committed events on. One thread hop per batch, however
many jobs the batch carries: that is where evq's speed comes from.

A commit reads the clock only once it holds the write lock (see `Tx.locked`), and waits
for that lock at most `busy_timeout` in all, then fails with LedgerLocked. A wait long
enough to be a stall is recorded in the ledger (see stalls.py). Every driver error
reaches the callers as the typed error that says what happened (failures.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ...clock import Clock
from ...errors import ContextClosed
from ...logs import get_logger
from ..records import Durability
from . import connection, failures, seals, sql, stalls
from .tx import AppendedRow, Tx
from .wal import WalWatch

T = TypeVar("T")
Op = Callable[[Tx], Any]
OnCommit = Callable[[list[AppendedRow]], None]

# A batch this light (in events it may write) commits on the event loop itself: the hop to
# the writer thread would cost as much as the commit. Never with power-loss durability.
INLINE_MAX_WEIGHT = 8
# SQLite's busy handler does the waiting; when it reports busy at once anyway (a WAL
# being recovered, say), try again after this long, within the same busy_timeout.
BEGIN_PAUSE = 0.005

_log = get_logger("evq.writer")


class _Refused(Exception):
    """An operation of an optimistic batch raised: redo the batch op by op."""


class _Busy(Exception):
    """The inline connection could not take the write lock at once: use the thread."""


def fail_batch(batch: Sequence[tuple[object, asyncio.Future[Any]]], failure: Exception
               ) -> None:
    """A commit failed: every caller of the batch gets `failure` (nobody's op landed)."""
    _log.error("evq.commit_failed", error=str(failure), kind=type(failure).__name__,
               ops=len(batch))
    for _, future in batch:
        if not future.done():
            future.set_exception(failure)


def hand_back(batch: Sequence[tuple[object, asyncio.Future[Any]]],
              results: list[tuple[bool, Any]],
              typed: Callable[[BaseException], Exception]) -> None:
    """A batch committed: each caller gets its op's result, or its refusal as `typed`
    says (a caller that gave up meanwhile gets nothing; its op committed anyway)."""
    for (_, future), (ok, value) in zip(batch, results, strict=True):
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(typed(value))


class Writer:
    def __init__(
        self,
        path: str | Path,
        clock: Clock,
        durability: Durability,
        on_commit: OnCommit,
        busy_timeout_ms: int = 10_000,
    ) -> None:
        self._path = str(path)
        self._clock = clock
        self._durability = durability
        self._busy_timeout_ms = busy_timeout_ms
        self._on_commit = on_commit
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="evq-writer")
        self._conn: sqlite3.Connection | None = None
        self._inline: sqlite3.Connection | None = None
        self._wal = WalWatch(self._path)
        # The newest seal each connection wrote; reset whenever a commit fails.
        self._last_seal: dict[int, seals.LastSeal] = {}
        self._queue: list[tuple[Op, asyncio.Future[Any]]] = []
        self._weight = 0
        # Monotonic time since which this writer has wanted the write lock through a
        # stall (a long wait, or a wait given up on), until a commit records it.
        self._stalled_since: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._executor, self._connect)
        if self._durability is Durability.PROCESS:
            # busy_timeout 0: if another process holds the lock, fall back to the thread
            # (which may wait) instead of blocking the event loop.
            self._inline = connection.connect(self._path, busy_timeout_ms=0)
        self._task = loop.create_task(self._loop(), name="evq-writer")

    def _connect(self) -> sqlite3.Connection:
        conn = connection.connect(
            self._path, durability=self._durability, busy_timeout_ms=self._busy_timeout_ms,
            check_same_thread=False,
        )
        connection.migrate(conn)
        return conn

    async def run(self, op: Callable[[Tx], T], weight: int = 1) -> T:
        """Run `op` in the next group commit and return its result once committed.

        `weight` is about how many events it may write; heavy batches always go to the
        writer thread. If the caller is cancelled while waiting, the operation still
        commits: once handed over, a decided outcome is never lost.
        """
        if self._closing or self._task is None:
            raise ContextClosed("the evq context is closed; open it with `async with`")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future))
        self._weight += weight
        self._wake.set()
        return await future

    async def close(self) -> None:
        """Commit everything already handed over, then close the connection."""
        if self._task is None:
            return
        self._closing = True
        self._wake.set()
        await self._task
        self._task = None
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        conn = self._conn
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, self._close_conn, conn)
        self._executor.shutdown(wait=True)

    def _close_conn(self, conn: sqlite3.Connection) -> None:
        self._wal.close(conn, self._busy_timeout_ms)
        conn.close()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                # Closing commits whatever was handed over first, however the wake-ups fell.
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            batch, self._queue = self._queue, []
            weight, self._weight = self._weight, 0
            ops = [op for op, _ in batch]
            try:
                done = self._commit_inline(ops) if weight <= INLINE_MAX_WEIGHT else None
                if done is None:
                    done = await loop.run_in_executor(self._executor, self._commit, ops)
                results, appended = done
            except BaseException as exc:  # the commit itself failed: nobody's op landed
                fail_batch(batch, self._typed(exc))
                continue
            hand_back(batch, results, self._typed)
            if appended:
                self._on_commit(appended)

    def _typed(self, exc: BaseException) -> Exception:
        """What a caller gets for an exception raised while committing."""
        if isinstance(exc, sqlite3.Error):
            return failures.ledger_error(exc, self._path, "writing to",
                                         self._busy_timeout_ms / 1000)
        return exc if isinstance(exc, Exception) else RuntimeError(repr(exc))

    def _commit_inline(self, ops: list[Op]
                       ) -> tuple[list[tuple[bool, Any]], list[AppendedRow]] | None:
        """Commit a small batch on the calling thread, or None if the file is busy or the
        WAL wants a checkpoint (both are the writer thread's job)."""
        conn = self._inline
        if conn is None or self._wal.wants_checkpoint():
            return None
        try:
            try:
                outcome = self._run_batch(conn, ops, isolate=False, begin=False)
            except _Refused:
                outcome = self._run_batch(conn, ops, isolate=True, begin=False)
        except _Busy:
            return None
        return outcome

    def _commit(self, ops: list[Op]) -> tuple[list[tuple[bool, Any]], list[AppendedRow]]:
        """Commit a batch. First without savepoints (a savepoint copies every page it
        touches into a sub-journal, which doubles the cost of a claim); if any operation
        is refused, roll back and redo the batch with a savepoint per operation so the
        refusal takes only that operation's writes with it. Operations are functions of
        the transaction alone, so running one again is safe: only the committed run's
        result is handed back."""
        conn = self._conn
        assert conn is not None
        try:
            results, appended = self._run_batch(conn, ops, isolate=False)
        except _Refused:
            results, appended = self._run_batch(conn, ops, isolate=True)
        self._wal.after_commit(conn, self._busy_timeout_ms)
        return results, appended

    def _run_batch(self, conn: sqlite3.Connection, ops: list[Op], *,
                   isolate: bool, begin: bool = True
                   ) -> tuple[list[tuple[bool, Any]], list[AppendedRow]]:
        if begin:
            self._begin(conn)
        else:
            try:
                conn.execute(sql.BEGIN_IMMEDIATE)
            except sqlite3.OperationalError as exc:
                if connection.is_busy(exc):
                    raise _Busy from exc
                raise
        results: list[tuple[bool, Any]] = []
        try:
            tx = Tx.locked(conn, self._clock.now())
            if self._stalled_since is not None:
                span = stalls.record(tx, time.monotonic() - self._stalled_since)
                _log.warning("evq.ledger_stalled", path=self._path, waited=round(
                    span[1] - span[0], 3), since=span[0], until=span[1])
            for op in ops:
                if not isolate:
                    try:
                        results.append((True, op(tx)))
                    except Exception as exc:
                        raise _Refused from exc
                    continue
                mark = tx.mark()
                conn.execute(sql.SAVEPOINT)
                try:
                    value = op(tx)
                except Exception as exc:
                    conn.execute(sql.ROLLBACK_TO)
                    conn.execute(sql.RELEASE)
                    tx.forget_after(mark)
                    results.append((False, exc))
                else:
                    conn.execute(sql.RELEASE)
                    results.append((True, value))
            last = self._last_seal.setdefault(id(conn), seals.LastSeal())
            tx.seal(last)
            conn.execute(sql.COMMIT)
        except BaseException:
            self._last_seal.pop(id(conn), None)
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):  # the first error is the one to tell
                    conn.execute(sql.ROLLBACK)
            raise
        self._stalled_since = None
        return results, tx.appended

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting for the write lock at most busy_timeout in all; past
        it, the busy error (the caller gets LedgerLocked). A long wait is a stall."""
        asked = time.monotonic()
        deadline = asked + self._busy_timeout_ms / 1000
        while True:
            try:
                conn.execute(sql.BEGIN_IMMEDIATE)
                break
            except sqlite3.OperationalError as exc:
                if not connection.is_busy(exc):
                    raise
                if time.monotonic() >= deadline:
                    self._note_stall(asked)
                    _log.warning("evq.writer_busy", path=self._path,
                                 waited=round(time.monotonic() - asked, 3))
                    raise
                time.sleep(BEGIN_PAUSE)
        if time.monotonic() - asked >= stalls.STALL:
            self._note_stall(asked)

    def _note_stall(self, asked: float) -> None:
        if self._stalled_since is None or asked < self._stalled_since:
            self._stalled_since = asked
