"""A transaction on a ledger connection, as operations see it: append events, run named
queries. It records what it appended so that the committer can hand the very same
events to subscribers after the commit.

Its time (`now`, every event's `at`, and every lease and retry time computed from it) is
read once the transaction holds the write lock, and is never before the newest event's
`at`: so `at` never decreases in position order, whichever process, clock or writer
wrote the events, and a lease written after a long wait for the lock starts when the
write lands, not when it was asked for."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from hashlib import sha256
from typing import Any

from ...codec import dumps
from ...errors import FlowError, JobStateConflict, LeaseLost, LedgerError, UnknownJob
from ..records import Committed
from . import schema, seals, sql

AppendedRow = Committed  # what a commit hands on: the events it appended, as records
_committed = Committed._make


# (kind, job_id, queue, job, attempt, worker, data, data already encoded as JSON or None)
NewEvent = tuple[str, str | None, str | None, str | None, int | None, str | None,
                 dict[str, Any], str | None]


class Tx:
    """Appends events inside a transaction someone else opened and will commit. Make it
    with `Tx.locked` once that transaction holds the write lock."""

    __slots__ = ("appended", "conn", "digests", "last_at", "now")

    def __init__(self, conn: sqlite3.Connection, now: float, last_at: float | None = None
                 ) -> None:
        self.conn = conn
        self.now = now
        # The newest event's `at` before this transaction (None: no event yet). The
        # ledger took no commit between then and now.
        self.last_at = last_at
        self.appended: list[AppendedRow] = []
        self.digests: list[bytes] = []  # each event's own hash, for this commit's seal

    @classmethod
    def locked(cls, conn: sqlite3.Connection, clock_now: float) -> Tx:
        """A transaction on `conn`, which holds the write lock; `clock_now` is the clock
        read after the lock was taken. Its time is that, or the newest event's `at` if
        that is later (a clock that stepped back, or another process's clock ahead)."""
        row = conn.execute(sql.NEWEST_AT).fetchone()
        last_at = None if row is None else float(row[0])
        return cls(conn, clock_now if last_at is None else max(clock_now, last_at), last_at)

    def mark(self) -> int:
        return len(self.appended)

    def forget_after(self, mark: int) -> None:
        """Drop what was appended after `mark` (rolled back to a savepoint)."""
        del self.appended[mark:]
        del self.digests[mark:]

    def seal(self, last: seals.LastSeal | None = None) -> None:
        """Seal what this transaction appended with a `seal` event (call it once, just
        before commit). `last`, kept by a long-lived writer, spares finding the previous
        seal when that writer wrote it; it is updated (commit, or forget it)."""
        row = self.seal_row(last)
        if row is not None:
            self.conn.execute(sql.APPEND_SEAL, row)

    def seal_row(self, last: seals.LastSeal | None = None
                 ) -> tuple[int, float, str, int] | None:
        """The seal event `seal` writes (position, at, data, v), counted as appended,
        for a caller that writes it itself (None: nothing to seal)."""
        if not self.appended:
            return None
        first, position = self.appended[0][0], self.appended[-1][0] + 1
        sealed = seals.seal_hash(seals.previous_hash(self.conn, first, last), self.digests,
                                 seals.seal_line(position, self.now, first))
        row = (position, self.now, seals.data_text(first, sealed), seals.SCHEME)
        self.appended.append(_committed((position, self.now, seals.SEAL, None, None, None,
                                         None, None, {"first": first, "hash": sealed},
                                         seals.SCHEME)))
        if last is not None:
            last.position, last.hash, last.at = position, sealed, self.now
        return row

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
        """Append one event; the triggers refuse it if the transition is not allowed.
        `text`, when given, is `data` already encoded as JSON."""
        body = data if data is not None else {}
        stored = text if text is not None else dumps(body) if body else "{}"
        try:
            cursor = self.conn.execute(
                sql.APPEND_EVENT,
                (self.now, kind, job_id, queue, job, attempt, worker, stored),
            )
        except sqlite3.IntegrityError as exc:
            raise refusal(str(exc), kind, job_id, attempt) from None
        position = cursor.lastrowid
        assert position is not None
        self.record(position, kind, job_id, queue, job, attempt, worker, body, stored)
        return position

    def record(self, position: int, kind: str, job_id: str | None, queue: str | None,
               job: str | None, attempt: int | None, worker: str | None,
               body: dict[str, Any], stored: str) -> None:
        """Count an event written at `position` (`stored`: its data as written) as this
        transaction's, for its seal and for the subscribers after the commit."""
        self.appended.append(_committed((position, self.now, kind, job_id, queue, job,
                                         attempt, worker, body, 1)))
        self.digests.append(sha256(seals.line(position, self.now, kind, job_id, queue, job,
                                              attempt, worker, stored)).digest())

    def append_many(self, events: Sequence[NewEvent]) -> None:
        """Append many events in one statement (kind, job_id, queue, job, attempt, worker,
        data, text each). All or none: a refused one refuses the lot. Under the write lock
        SQLite hands out one contiguous run of positions, which is how each event
        learns its position."""
        if not events:
            return
        rows = stored_rows(events)
        try:
            self.conn.execute(sql.APPEND_EVENTS_JSON, (self.now, dumps(rows)))
        except sqlite3.IntegrityError as exc:
            # The refused statement left nothing behind; one at a time, the refusal names
            # the event it was about (the caller rolls back what these append).
            for kind, job_id, queue, job, attempt, worker, data, text in events:
                self.append(kind, job_id, queue, job, attempt, worker, data, text)
            first = events[0]
            raise refusal(str(exc), first[0], first[1], first[4]) from None
        last = self.conn.execute(sql.LAST_POSITION).fetchone()[0]
        self.record_many(last - len(events) + 1, events, rows)

    def record_many(self, first_position: int, events: Sequence[NewEvent],
                    rows: Sequence[tuple[Any, ...]]) -> None:
        """`record` for events written at consecutive positions from `first_position`
        (`rows`: each as written, see `stored_rows`)."""
        now = self.now
        self.appended.extend(
            _committed((first_position + i, now, kind, job_id, queue, job, attempt, worker,
                        data, 1))
            for i, (kind, job_id, queue, job, attempt, worker, data, _) in enumerate(events))
        line = seals.line
        self.digests.extend(sha256(line(first_position + i, now, *row)).digest()
                            for i, row in enumerate(rows))

    def rows(self, query: str, params: Iterable[Any] = ()) -> list[Any]:
        return self.conn.execute(query, tuple(params)).fetchall()

    def one(self, query: str, params: Iterable[Any] = ()) -> Any:
        return self.conn.execute(query, tuple(params)).fetchone()


def stored_rows(events: Sequence[NewEvent]) -> list[tuple[Any, ...]]:
    """Each event as it is written: its data encoded (the text given, if any)."""
    return [(kind, job_id, queue, job, attempt, worker,
             text if text is not None else dumps(data) if data else "{}")
            for kind, job_id, queue, job, attempt, worker, data, text in events]


def refusal(text: str, kind: str, job_id: str | None, attempt: int | None) -> Exception:
    """Turn a trigger's refusal (its error text) into the typed error a caller can act
    on."""
    if schema.STALE in text:
        return LeaseLost(
            f"{kind} refused for job {job_id} attempt {attempt}: this worker no longer "
            "holds that attempt (its lease ran out and it was rescued, or it was "
            "cancelled); the ledger is unchanged"
        )
    if schema.FLOW in text:
        return FlowError(
            f"{kind} refused for job {job_id}: each child must be a job that has not ended "
            "and has no other parent")
    if schema.UNKNOWN_JOB in text:
        return UnknownJob(f"no job {job_id} in the ledger (it may have been deleted)")
    if schema.NOT_PENDING in text:
        return JobStateConflict(
            f"{kind} refused: job {job_id} has already ended; see `evq history {job_id}`"
        )
    if schema.RUNNING in text:
        return JobStateConflict(
            f"{kind} refused: job {job_id} is running; cancel it or wait for it to end"
        )
    if "UNIQUE constraint failed: evq_jobs.id" in text:
        return JobStateConflict(f"a job with id {job_id} already exists")
    return LedgerError(f"the ledger refused {kind} for job {job_id}: {text}")
