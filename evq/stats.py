"""Per-queue figures from the events over a window: what finished, how fast, how long
jobs waited and ran, how often attempts failed. Computed here from the ledger's events
(read-only, in short transactions), so every engine gives the same figures."""

from __future__ import annotations

import statistics
from typing import Any

import attrs

from .events import TIME_STEP, Event
from .ledger import Ledger


@attrs.define
class QueueStats:
    queue: str
    succeeded: int = 0
    failed: int = 0  # fail and expire
    cancelled: int = 0
    attempts: int = 0
    errors: int = 0
    waits: list[float] = attrs.field(factory=list)
    runs: list[float] = attrs.field(factory=list)

    def as_dict(self, seconds: float) -> dict[str, Any]:
        return {
            "queue": self.queue, "succeeded": self.succeeded, "failed": self.failed,
            "cancelled": self.cancelled, "attempts": self.attempts,
            "error_rate": round(self.errors / self.attempts, 4) if self.attempts else 0.0,
            "throughput_per_s": round(self.succeeded / seconds, 3) if seconds > 0 else None,
            "wait_ms": _percentiles(self.waits), "run_ms": _percentiles(self.runs),
        }


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ms = sorted(v * 1000 for v in values)
    if len(ms) == 1:
        return {"p50": round(ms[0], 3), "p90": round(ms[0], 3), "p99": round(ms[0], 3)}
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50": round(statistics.median(ms), 3), "p90": round(cuts[89], 3),
            "p99": round(cuts[98], 3)}


def compute(ledger: Ledger, since: float | None, until: float | None,
            most: int | None = None) -> tuple[dict[str, QueueStats], float]:
    """Stats per queue for events in [since, until]; also the window's length in seconds.
    Wait is from enqueue (or a later run_at) to the start of the first attempt; run time
    from the start of an attempt to its outcome. With `most`, only the window's newest
    `most` events are read (a bounded time on a busy ledger): the window then begins at
    the first of them, and the length returned says so.

    Reads only the window: its first event is found by time (`Ledger.last_position`),
    the reading stops at the first event after it, and the events of jobs enqueued
    before it that ran in it are read by job (to find their enqueue and first run)."""
    found: dict[str, QueueStats] = {}
    ready: dict[str, float] = {}  # job -> when it could first run
    started: dict[str, float] = {}  # job -> start of its current attempt
    first_runs: list[tuple[QueueStats, str, int]] = []  # enqueued before the window
    seen_runs: set[str] = set()
    first_at = last_at = None
    # From just before `since`: an event's time is read to the microsecond (Event.at).
    after = 0 if since is None else ledger.last_position(at=since - TIME_STEP)
    if most is not None:  # only the window's newest `most` events: it starts at them
        newest = ledger.last_position(at=until)
        if newest - after > most:
            after, since = newest - most, None
    for event in ledger.read_events(after):
        at = event.timestamp
        if until is not None and at > until:
            break
        if event.kind == "enqueue" and event.job_id:
            ready[event.job_id] = _ready_at(event)
        elif event.kind == "run_now" and event.job_id in ready:  # due sooner than it was
            ready[event.job_id] = min(ready[event.job_id], event.timestamp)
        if since is not None and at < since:
            continue  # (a ledger whose older writers' clocks disagreed)
        if event.queue is None or event.job_id is None:
            continue
        first_at = at if first_at is None else first_at
        last_at = at
        queue = found.setdefault(event.queue, QueueStats(event.queue))
        kind = event.kind
        if kind == "run":
            queue.attempts += 1
            started[event.job_id] = at
            if event.job_id in ready:
                queue.waits.append(max(0.0, at - ready.pop(event.job_id)))
            elif event.job_id not in seen_runs:  # maybe its first run: looked up below
                first_runs.append((queue, event.job_id, event.position))
            seen_runs.add(event.job_id)
        elif kind in ("success", "error", "fail"):
            begun = started.pop(event.job_id, None)
            if begun is not None:
                queue.runs.append(at - begun)
            if kind == "success":
                queue.succeeded += 1
            elif kind == "error":
                queue.errors += 1
        if kind in ("expire", "fail"):
            queue.failed += 1
        elif kind == "cancel":
            queue.cancelled += 1
    earlier = _first_runs_of(ledger, [job_id for _, job_id, _ in first_runs])
    for queue, job_id, position in first_runs:
        if job_id in earlier and earlier[job_id][0] == position:
            queue.waits.append(max(0.0, earlier[job_id][2] - earlier[job_id][1]))
    start = since if since is not None else first_at
    end = until if until is not None else last_at
    window = (end - start) if start is not None and end is not None else 0.0
    return found, window


def _ready_at(enqueue: Event) -> float:
    """When an enqueued job could first run: its enqueue, or a later run_at."""
    run_at = enqueue.data.get("run_at")
    return max(enqueue.timestamp,
               run_at if isinstance(run_at, (int, float)) else enqueue.timestamp)


def _first_runs_of(ledger: Ledger, job_ids: list[str], chunk: int = 500
                   ) -> dict[str, tuple[int, float, float]]:
    """For each of these jobs, its first run from its own events: (that run's position,
    when the job could first run, when that run began). A job whose enqueue was
    archived is left out."""
    found: dict[str, tuple[int, float, float]] = {}
    for first in range(0, len(job_ids), chunk):
        ready: dict[str, float] = {}
        for event in ledger.events_of_jobs(job_ids[first:first + chunk]):
            job_id = event.job_id
            if job_id is None:
                continue
            if event.kind == "enqueue":
                ready[job_id] = _ready_at(event)
            elif event.kind == "run" and job_id in ready and job_id not in found:
                found[job_id] = (event.position, ready[job_id], event.timestamp)
    return found
