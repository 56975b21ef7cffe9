"""The audit side of the SQLite engine, its reads: events in chunks or as they come, a
job's or a flow's story, current jobs, deployed definitions, and job ids from what people
type. Synchronous, each on a short-lived read-only connection of its own (autocommit:
every statement reads its own snapshot), so it runs beside workers without holding them
up or pinning the WAL."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ... import codec
from ...errors import EvqError, InvalidInput
from ...events import Event, event_from_row
from ...jobs import Child, JobRecord
from ..audit_records import (
    Deployed,
    FlowTree,
    JobFilter,
    JobLabel,
    JobPage,
    JobQuery,
    StorageSize,
    WorkerSeen,
)
from . import connection, sql
from . import flows as edges
from .base import EngineBase
from .failures import ledger_error

_CHUNK = 2000
# Jobs in these states are listed through the state's own index (see sql.LIST_PENDING_JOBS).
_LIVE_STATES = {"pending": sql.LIST_PENDING_JOBS, "running": sql.LIST_RUNNING_JOBS}
_FLOW_DEPTH = 64  # evq.flows.MAX_DEPTH: no flow is deeper; guards against a forged cycle


class AuditSide(EngineBase):
    """Reads for people and tools (the CLI, verify, stats, `Context.flow`)."""

    @contextlib.contextmanager
    def _checked(self, doing: str = "reading") -> Iterator[sqlite3.Connection]:
        """A read-only connection to a complete ledger of this evq's schema version."""
        with self.reading(doing) as conn:
            connection.require_schema(conn, self.path)
            yield conn

    def check_schema(self) -> None:
        with self._checked("opening"):
            pass

    def typed_error(self, exc: BaseException) -> EvqError | None:
        if not isinstance(exc, sqlite3.Error):
            return None
        return ledger_error(exc, self.path, "using", self.busy_timeout)

    # --- job ids ---------------------------------------------------------------------------
    def find_job_ids(self, text: str, most: int) -> list[str]:
        if not codec.storable(text):
            return []
        with self._checked() as conn:
            if conn.execute(sql.JOB_ID_KNOWN, (text,)).fetchone():
                return [text]
            return sorted({str(row[0]) for row in [
                *conn.execute(sql.FIND_JOB_IDS_BY_PREFIX, (text, _after_prefix(text), most)),
                *conn.execute(sql.FIND_JOB_IDS_BY_SUFFIX, ("*" + _glob_literal(text), most))]})

    def job_labels(self, job_ids: Sequence[str]) -> dict[str, JobLabel]:
        found = {}
        with self._checked() as conn:
            for job_id in job_ids:
                row = conn.execute(sql.JOB_ID_LABEL, (job_id,)).fetchone()
                if row is not None:
                    found[job_id] = JobLabel(str(row[0]), str(row[1]))
        return found

    # --- events ----------------------------------------------------------------------------
    def read_events(self, after: int = 0) -> Iterator[Event]:
        with self._checked() as conn:
            yield from _events_after(conn, after)

    def read_events_back(self, before: int) -> Iterator[Event]:
        with self._checked() as conn:
            while True:
                rows = conn.execute(sql.EVENTS_BEFORE, (before, _CHUNK)).fetchall()
                for row in rows:
                    yield event_from_row(tuple(row))
                if len(rows) < _CHUNK:
                    return
                before = rows[-1][0]

    def follow(self, after: int, poll: float) -> Iterator[Event]:
        # `PRAGMA data_version` changes when another connection commits (microseconds to
        # ask), so an idle ledger costs one tiny statement per poll.
        with self._checked() as conn:
            seen = None
            while True:
                version = conn.execute(sql.DATA_VERSION).fetchone()[0]
                if version != seen:
                    seen = version
                    for event in _events_after(conn, after):
                        after = event.position
                        yield event
                time.sleep(poll)

    def last_position(self, at: float | None = None) -> int:
        with self._checked() as conn:
            if at is None:
                return int(conn.execute(sql.LAST_POSITION).fetchone()[0] or 0)
            return last_position_at(conn, at)

    def job_history(self, job_id: str) -> list[Event]:
        with self._checked() as conn:
            return [event_from_row(tuple(row))
                    for row in conn.execute(sql.EVENTS_FOR_JOB, (job_id,))]

    def events_of_jobs(self, job_ids: Sequence[str]) -> list[Event]:
        with self._checked() as conn:
            return [event_from_row(tuple(row))
                    for row in conn.execute(sql.EVENTS_FOR_JOBS, (json.dumps(list(job_ids)),))]

    # --- the current state -----------------------------------------------------------------
    def read_job(self, job_id: str) -> JobRecord | None:
        with self._checked() as conn:
            return _job(conn, job_id)

    def find_jobs(self, wanted: JobFilter) -> list[JobRecord]:
        limit = -1 if wanted.limit is None else wanted.limit
        live = _LIVE_STATES.get(wanted.state or "")
        with self._checked() as conn:
            rows = (conn.execute(sql.LIST_JOBS_WHERE, (wanted.state, wanted.queue, limit))
                    if live is None else conn.execute(live, (wanted.queue, limit)))
            return [JobRecord.from_row(tuple(row)) for row in rows]

    def job_page(self, query: JobQuery) -> JobPage:
        if query.state is not None and query.state not in sql.JOB_STATES:
            raise InvalidInput(f"state must be one of {', '.join(sql.JOB_STATES)}, "
                               f"not {query.state!r}")
        if query.scan is not None and query.scan < 1:
            raise InvalidInput(f"scan must be at least 1 job, not {query.scan}")
        checked = (query.queue, query.name, query.since, query.until, query.text)
        before = sql.LARGEST_POSITION if query.before is None else query.before
        if checked == (None,) * 5:  # the state's index alone: the candidates are the page
            statement, most, bounded = sql.JOB_PAGES[query.state], query.limit, False
        elif query.scan is None:  # every job checked, streaming down the index
            statement, most, bounded = sql.JOB_SEARCHES[query.state], -1, False
        else:
            statement, most, bounded = sql.JOB_PAGES[query.state], query.scan, True
        with self._checked() as conn:
            conn.execute(sql.BEGIN)  # one snapshot: the page and where its search stopped
            try:
                rows = conn.execute(statement, (before, most, *checked, query.limit))
                found = [JobRecord.from_row(tuple(row)) for row in rows]
                if not bounded or len(found) == query.limit:
                    return JobPage(found)
                # Stopped short: say where, unless no job was left unexamined (one
                # candidate past the bound tells).
                looked, oldest = conn.execute(sql.JOB_CANDIDATES[query.state],
                                              (before, most + 1)).fetchone()
                return JobPage(found, None if looked <= most else int(oldest))
            finally:
                conn.execute(sql.ROLLBACK)

    def workers(self) -> list[WorkerSeen]:
        with self._checked() as conn:
            rows = conn.execute(sql.LIST_WORKERS).fetchall()
        found = []
        for name, jobs, last_seen, host, pid in rows:
            names = codec.stored_json(jobs)
            found.append(WorkerSeen(str(name), tuple(str(n) for n in names)
                                    if isinstance(names, list) else (), float(last_seen),
                                    host, None if pid is None else int(pid)))
        return found

    def paused_queues(self) -> list[str]:
        with self._checked() as conn:
            return sorted(str(row[0]) for row in conn.execute(sql.PAUSED_QUEUES))

    def storage_size(self) -> StorageSize:
        self.check_schema()
        wal_bytes = _size(Path(f"{self.path}-wal"))  # 0 once the last connection closed
        return StorageSize(_size(Path(self.path)) + wal_bytes, wal_bytes)

    def count_jobs(self, query: JobQuery) -> int:
        return len(self.job_page(query).jobs)

    def job_counts(self) -> list[tuple[str, str, int]]:
        with self._checked() as conn:
            return [(str(queue), str(state), int(n)) for queue, state, n in
                    conn.execute(sql.COUNT_JOBS_BY_QUEUE_STATE)]

    def finished_over_time(self, since: float, until: float, step: float
                           ) -> list[tuple[int, str, int]]:
        with self._checked() as conn:
            return [(int(slot), str(state), int(n)) for slot, state, n in
                    conn.execute(sql.FINISHED_OVER_TIME, (since, until, step))]

    def backlog(self, now: float) -> list[tuple[str, int, float]]:
        with self._checked() as conn:
            return [(str(queue), int(n), float(oldest)) for queue, n, oldest in
                    conn.execute(sql.BACKLOG, (now,))]

    def read_flow(self, job_id: str) -> FlowTree | None:
        with self._checked() as conn:
            root = edges.ancestors(conn, job_id)[-1]
            record = _job(conn, root)
            return None if record is None else _subtree(conn, record, None, 0, root)

    def definitions(self) -> list[Deployed]:
        with self._checked() as conn:
            schedules = {name: (spec, next_at, last_at) for name, spec, next_at, last_at
                         in conn.execute(sql.LIST_SCHEDULES)}
            deployed = conn.execute(sql.LIST_DEFINITIONS).fetchall()
        found = []
        for name, queue, data in deployed:
            spec, next_at, last_at = schedules.get(name, (None, None, None))
            found.append(Deployed(name, queue, codec.stored_object(data) or {}, spec, next_at,
                                  last_at))
        return found


def _events_after(conn: sqlite3.Connection, after: int) -> Iterator[Event]:
    """Every event after `after`, oldest first, read in short chunks."""
    while True:
        rows = conn.execute(sql.EVENTS_AFTER, (after, _CHUNK)).fetchall()
        for row in rows:
            yield event_from_row(tuple(row))
        if len(rows) < _CHUNK:
            return
        after = rows[-1][0]


def _job(conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
    row = conn.execute(sql.GET_JOB, (job_id,)).fetchone()
    return JobRecord.from_row(tuple(row)) if row else None


def _subtree(conn: sqlite3.Connection, record: JobRecord | None, edge: Child | None,
             depth: int, node_id: str) -> FlowTree:
    name = record.name if record is not None else edge.name if edge else ""
    queue = record.queue if record is not None else edge.queue if edge else ""
    children: list[FlowTree] = []
    if depth < _FLOW_DEPTH:
        for row in conn.execute(sql.CHILDREN_OF, (node_id,)).fetchall():
            child = Child.from_row(tuple(row))
            children.append(_subtree(conn, _job(conn, child.id), child, depth + 1, child.id))
    return FlowTree(node_id, name, queue, record, edge, tuple(children))



def _glob_literal(text: str) -> str:
    """`text` as a GLOB pattern that matches only itself."""
    return "".join(f"[{char}]" if char in "*?[" else char for char in text)


def _after_prefix(prefix: str) -> str | bytes:
    """The least text that sorts after every text beginning with `prefix` (SQLite
    compares text as UTF-8 bytes, which is code point order): the prefix with its last
    character that can be incremented incremented. An empty blob, which sorts after
    all text, when there is none."""
    chars = list(prefix)
    while chars:
        point = ord(chars.pop()) + 1
        if point == 0xD800:
            point = 0xE000  # surrogates are not text
        if point <= 0x10FFFF:
            return "".join(chars) + chr(point)
    return b""


def last_position_at(conn: sqlite3.Connection, at: float) -> int:
    """The position just before the first event after time `at` (the newest position if
    none is after it; 0 for an empty log), found by bisecting positions: `at` never
    decreases in position order, so a few indexed reads answer on any size of ledger.
    Archiving leaves holes in the positions held; each probe reads the first event at or
    after its position."""
    low, high = conn.execute(sql.POSITION_BOUNDS).fetchone()
    if high is None:
        return 0
    if float(conn.execute(sql.EVENT_AT_OR_AFTER, (high,)).fetchone()[1]) <= at:
        return int(high)
    first_after = int(high)
    # The answer is first_after, or an event in [low, high) after `at`.
    low, high = int(low), int(high)
    while low < high:
        middle = (low + high) // 2
        position, stamp = conn.execute(sql.EVENT_AT_OR_AFTER, (middle,)).fetchone()
        if position >= high:  # no event in [middle, high)
            high = middle
        elif float(stamp) > at:
            first_after, high = int(position), middle
        else:
            low = int(position) + 1
    return first_after - 1


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
