"""The event envelope and the catalogue of event kinds.

Kinds are stable snake_case strings. `data` shapes carry a version (`Event.v`) so that old
ledgers always replay; the README documents each kind's data.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import attrs

from .codec import FIRST_DATETIME, stored_datetime, stored_object


class EventKind(enum.StrEnum):
    """Every kind of event evq writes."""

    DEPLOY = "deploy"
    ENQUEUE = "enqueue"
    REJECT = "reject"
    DEQUEUE = "dequeue"
    RUN = "run"
    HEARTBEAT = "heartbeat"
    ORPHAN = "orphan"
    ERROR = "error"
    SUCCESS = "success"
    FAIL = "fail"
    REQUEUE = "requeue"
    DEFER = "defer"
    RESCUE = "rescue"
    EXPIRE = "expire"
    CANCEL = "cancel"
    DELETE = "delete"
    SCHEDULE = "schedule"
    SCHEDULE_ORPHAN = "schedule_orphan"
    HOOK = "hook"
    SEAL = "seal"
    RETRY = "retry"
    LEADER = "leader"
    PAUSE = "pause"
    RESUME = "resume"
    WAIT = "wait"
    """A flow's parent waits for children: data.children [{id, on_failure}]."""
    CHILD = "child"
    """A child of a waiting parent settled: data {child, outcome, result or error}."""
    READY = "ready"
    """Nothing is left for a parent to wait for: it is pending from data.run_at."""
    RUN_NOW = "run_now"
    """An operator made a pending job due now: data {run_at, was, reason}."""
    ARCHIVE = "archive"
    """Events of deleted jobs were moved to an archive file (see evq/archive.py)."""


TERMINAL_KINDS = frozenset({"success", "fail", "expire", "cancel"})


@attrs.frozen(slots=True)
class Event:
    """One committed row of the ledger, as handlers and readers see it."""

    position: int
    at: datetime
    kind: str
    job_id: str | None
    queue: str | None
    job: str | None
    attempt: int | None
    worker: str | None
    data: dict[str, Any]
    v: int = 1

    @property
    def timestamp(self) -> float:
        return self.at.timestamp()


# An event's time as read (Event.at, a datetime) is the stored float to the microsecond;
# a search by the stored float starts this much before a time read back, and the filter
# on Event.at decides.
TIME_STEP = 1e-6


def event_from_row(row: tuple[Any, ...], data: object = None) -> Event:
    """Build an Event from (position, at, kind, job_id, queue, job, attempt, worker, data,
    v). `data`: already decoded, else read from the row's data text. Any stored value is
    read without failing (see codec.stored_datetime); data that is not a JSON object
    comes as {"unreadable": what was stored}."""
    if data is None and len(row) > 8:
        data = stored_object(row[8], "unreadable")
    if not isinstance(data, dict):
        data = {"unreadable": data}
    return Event(
        position=row[0],
        at=stored_datetime(row[1]) or FIRST_DATETIME,
        kind=row[2],
        job_id=row[3],
        queue=row[4],
        job=row[5],
        attempt=row[6],
        worker=row[7],
        data=data,
        v=row[9] if len(row) > 9 else 1,
    )
