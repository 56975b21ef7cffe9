"""The process's one writer on a PostgreSQL ledger: group commit on a dedicated thread.

As on SQLite, coroutines hand it operations (functions of a transaction), and every
operation waiting at that moment commits in one transaction, each inside a savepoint
only when one of them is refused. The transaction first takes the ledger's append lock
(`pg_advisory_xact_lock`, held to the commit): writers of every process take turns, so
positions are handed out gap-free in commit order and the hash chain is one line, and a
commit's NOTIFY wakes the other processes' workers.

A transaction is two round trips: one opens it (BEGIN, the lock, the newest event), one
carries its events, seal and COMMIT. While no other writer appends between this
writer's commits, a batch that only appends (an enqueue, a job's outcome) is sent
speculatively in one: BEGIN, the lock, a check that the newest event is still this
writer's last seal (and that the lock came at once), the events at the positions after
it, the seal chained to it, COMMIT. If the check fails (another writer appended), the
whole text is refused and the batch goes the two-round-trip way.

A connection found dropped before the batch's COMMIT was sent (the server restarted or
ended the session while it sat idle) is replaced, and the batch redone on the new one,
once. A speculative commit cut off the same way may or may not have run: the redo,
under the lock, first ends the old session (and waits for it), then looks for the
commit's seal, and reports it committed if it is there. A connection that drops
after an ordinary COMMIT was sent (a lost answer), or a server that cannot be reached,
fails the batch with LedgerUnavailable, and the next batch connects again. A commit
whose answer was lost may or may not have landed; the ledger's fencing makes a retried
report harmless (a second outcome for one attempt is refused), so nothing succeeds
twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import attrs
import psycopg
from psycopg import sql as pgsql

from ...clock import Clock
from ...errors import ContextClosed
from ...logs import get_logger
from ..records import Committed
from ..sqlite import seals
from ..sqlite.writer import fail_batch, hand_back
from . import connection, failures, sql
from .dialect import Dialect
from .tx import PgTx
from .url import Target

T = TypeVar("T")
Op = Callable[[PgTx], Any]
OnCommit = Callable[[list[Committed]], None]

_log = get_logger("evq.writer")
# A speculative commit whose lock wait was longer goes the ordinary way, stamped with a
# time read once the lock is held (a lease it renews is not shortened by the wait).
_LOCK_WAIT_MS = 50


class _Refused(Exception):
    """An operation of an optimistic batch raised: redo the batch op by op."""


@attrs.frozen
class _Unsure:
    """A speculative commit whose answer was lost: it landed if its seal is there."""

    position: int
    hash: str
    results: list[tuple[bool, Any]]
    appended: list[Committed]
    backend: int  # the server process of the connection it was sent on


class Writer:
    def __init__(self, target: Target, clock: Clock, on_commit: OnCommit,
                 busy_timeout_ms: int = 10_000) -> None:
        self._target = target
        self._busy_timeout_ms = busy_timeout_ms
        self._clock = clock
        self._on_commit = on_commit
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="evq-writer")
        self._conn: Dialect | None = None
        self._last_seal = seals.LastSeal()
        self._queue: list[tuple[Op, asyncio.Future[Any]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._sent_commit = False  # whether the batch being committed got to its COMMIT
        # Whether the next batch may be committed speculatively, in one round trip: no
        # other writer appended between this writer's last two commits.
        self._speculate = False
        self._unsure: _Unsure | None = None
        self._begin = sql.BEGIN_LOCKED_NEWEST.format(key=target.lock_key)
        self._commit_text = sql.NOTIFY_COMMIT.format(channel=sql.channel(target.schema))

    @property
    def backend_pid(self) -> int | None:
        """The server process of the writer's connection (its own NOTIFYs come from it)."""
        return None if self._conn is None else self._conn.raw.info.backend_pid

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._executor, self._connect)
        self._task = loop.create_task(self._loop(), name="evq-writer")

    def _connect(self) -> Dialect:
        return connection.connect(self._target, "writing to", self._busy_timeout_ms)

    async def run(self, op: Callable[[PgTx], T], weight: int = 1) -> T:
        """Run `op` in the next group commit and return its result once committed. If
        the caller is cancelled while waiting, the operation still commits."""
        if self._closing or self._task is None:
            raise ContextClosed("the evq context is closed; open it with `async with`")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future))
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
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            batch, self._queue = self._queue, []
            ops = [op for op, _ in batch]
            try:
                results, appended = await loop.run_in_executor(self._executor, self._commit,
                                                               ops)
            except BaseException as exc:  # the commit itself failed: nobody's op landed
                fail_batch(batch, self._typed(exc))
                continue
            hand_back(batch, results, self._typed)
            if appended:
                self._on_commit(appended)

    def _typed(self, exc: BaseException) -> Exception:
        if isinstance(exc, psycopg.Error):
            return failures.ledger_error(exc, self._target.shown, "writing to")
        return exc if isinstance(exc, Exception) else RuntimeError(repr(exc))

    def _commit(self, ops: list[Op]) -> tuple[list[tuple[bool, Any]], list[Committed]]:
        """Commit a batch: first without savepoints; if an operation is refused, roll
        back and redo it with a savepoint per operation, so that the refusal takes only
        that operation's writes with it."""
        try:
            return self._commit_reconnecting(ops)
        finally:
            # A speculative commit left unsure belongs to this batch only: if it could
            # not be settled, its callers got LedgerUnavailable, and the next batch must
            # never take its results for its own.
            self._unsure = None

    def _commit_reconnecting(self, ops: list[Op]
                             ) -> tuple[list[tuple[bool, Any]], list[Committed]]:
        while True:
            fresh = self._conn is None
            if self._conn is None:
                self._conn = self._connect()
            conn = self._conn
            try:
                try:
                    return self._run_batch(conn, ops, isolate=False)
                except _Refused:
                    return self._run_batch(conn, ops, isolate=True)
            except BaseException as exc:
                gone = failures.is_disconnect(exc) or conn.raw.closed
                if gone:
                    self._conn = None
                    with contextlib.suppress(Exception):
                        conn.close()
                # A session the server ended while it sat idle (a restart,
                # pg_terminate_backend) is found dead only by the next statement. If
                # the COMMIT was not sent, nothing of the batch landed: redo it once on a
                # new connection instead of failing writes the server would now take. A
                # speculative commit cut off the same way may have landed: the redo
                # first settles that, under the append lock. A new connection failing
                # too, or a lost answer to an ordinary COMMIT (which may have landed), is
                # the callers' LedgerUnavailable.
                if gone and not fresh and (not self._sent_commit or self._unsure):
                    _log.info("evq.reconnected", reason=str(self._typed(exc)))
                    continue
                raise

    def _run_batch(self, conn: Dialect, ops: list[Op], *, isolate: bool
                   ) -> tuple[list[tuple[bool, Any]], list[Committed]]:
        raw = conn.raw
        self._sent_commit = False
        if (not isolate and self._speculate and self._last_seal.position
                and self._unsure is None):
            done = self._speculatively(raw, ops)
            if done is not None:
                return done
        results: list[tuple[bool, Any]] = []
        try:
            # Inside the try: a lock wait cut short (statement_timeout, lock_timeout)
            # fails this statement with the transaction open, and it must be rolled back,
            # or every later batch on this connection would find it aborted.
            ours = self._last_seal.position
            tx = PgTx.begin(conn, self._begin, self._clock.now, self._last_seal)
            self._speculate = bool(ours) and tx.next_position - 1 == ours
            unsure, self._unsure = self._unsure, None
            if unsure is not None and self._landed(raw, tx, unsure):
                raw.execute(sql.ROLLBACK)
                return unsure.results, unsure.appended
            # Optimistically, appends wait for the commit's round trip; a refusal found
            # there redoes the batch isolated, where each append is written at once.
            tx.hold_back = not isolate
            for op in ops:
                if not isolate:
                    try:
                        results.append((True, op(tx)))
                    except Exception as exc:
                        if failures.fails_the_batch(exc):
                            raise
                        raise _Refused from exc
                    continue
                mark = tx.mark()
                raw.execute(sql.SAVEPOINT)
                try:
                    value = op(tx)
                except Exception as exc:
                    if failures.fails_the_batch(exc):
                        raise
                    raw.execute(sql.ROLLBACK_TO)
                    raw.execute(sql.RELEASE)
                    tx.forget_after(mark)
                    results.append((False, exc))
                else:
                    raw.execute(sql.RELEASE)
                    results.append((True, value))
            commit = tx.commit_text(self._commit_text, self._last_seal)
            self._sent_commit = True
            try:
                raw.execute(commit)
            except psycopg.Error as exc:
                # As if raised by the operation whose append it was (a refusal, a bad
                # value): redone isolated. The server's or the connection's trouble
                # fails the batch.
                if isolate or failures.fails_the_batch(exc):
                    raise
                raise _Refused from exc
        except BaseException:
            self._last_seal = seals.LastSeal()
            if not raw.closed and conn.in_transaction:
                with contextlib.suppress(psycopg.Error):
                    raw.execute(sql.ROLLBACK)
            raise
        return results, tx.appended

    def _speculatively(self, raw: psycopg.Connection[Any], ops: list[Op]
                       ) -> tuple[list[tuple[bool, Any]], list[Committed]] | None:
        """Commit the batch in one round trip, assuming the ledger's newest event is
        still this writer's last seal (see PgTx.speculative_after); None if it cannot
        be (an operation reads or raised, or another writer appended first): nothing of
        it landed, and the batch goes the ordinary way."""
        last = self._last_seal
        newest = last.position  # what the text checks, once it holds the lock
        tx = PgTx.speculative_after(self._clock.now(), last)
        try:
            results = [(True, op(tx)) for op in ops]
        except Exception:  # NeedsLock, or a refusal the ordinary way reports
            return None
        if not tx.appended:
            return results, []
        try:
            commit = tx.commit_text(self._commit_text, last)
        except Exception:
            self._last_seal = seals.LastSeal()  # commit_text may have moved it
            self._speculate = False
            return None
        sealed = tx.appended[-1]
        self._unsure = _Unsure(sealed.position, str(sealed.data["hash"]), results,
                               tx.appended, raw.info.backend_pid)
        self._sent_commit = True
        try:
            raw.execute(pgsql.SQL(sql.BEGIN_LOCKED_IF_NEWEST.format(
                position=newest, wait_ms=_LOCK_WAIT_MS, key=self._target.lock_key)) + commit)
        except BaseException as exc:
            self._last_seal = seals.LastSeal()
            self._speculate = False
            if failures.is_disconnect(exc) or raw.closed:
                raise  # it may have landed: _commit reconnects, and the redo looks
            self._unsure = None
            if raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):
                    raw.execute(sql.ROLLBACK)
            # A timeout or a full disk would only be met again; a refusal, or the
            # position taken by another writer, is sorted out the ordinary way.
            if failures.fails_the_batch(exc) or not isinstance(exc, psycopg.Error):
                raise
            self._sent_commit = False
            return None
        self._unsure = None
        return results, tx.appended

    def _landed(self, raw: psycopg.Connection[Any], tx: PgTx, unsure: _Unsure) -> bool:
        """Whether a speculative commit cut off before its answer landed (the caller
        holds the append lock)."""
        # The old session may not have run the text yet (it may even wait for the lock
        # held here): it is ended first, and waited for, so that what is found now is
        # final.
        raw.execute(sql.END_OLD_SESSION, (unsure.backend,))
        if tx.next_position <= unsure.position:
            return False
        row = raw.execute(sql.EVENT_KIND_DATA_AT, (unsure.position,)).fetchone()
        return (row is not None and row[0] == seals.SEAL
                and json.loads(row[1]).get("hash") == unsure.hash)
