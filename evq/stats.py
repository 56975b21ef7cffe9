"""Per-queue figures from the events over a window: what finished, how fast, how long
jobs waited and ran, how often attempts failed. Computed here from the ledger's events
(read-only, in short transactions), so every engine gives the same figures."""

from __future__ import annotations

import statistics
from typing import Any

import attrs

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


def compute(ledger: Ledger, since: float | None, until: float | None
            ) -> tuple[dict[str, QueueStats], float]:
    """Stats per queue for events in [since, until]; also the window's length in seconds.
    Wait is from enqueue (or a later run_at) to the start of the first attempt; run time
    from the start of an attempt to its outcome."""
    found: dict[str, QueueStats] = {}
    ready: dict[str, float] = {}  # job -> when it could first run
    started: dict[str, float] = {}  # job -> start of its current attempt
    first_at = last_at = None
    for event in ledger.read_events():
        at = event.timestamp
        if event.kind == "enqueue" and event.job_id:
            run_at = event.data.get("run_at")
            ready[event.job_id] = max(at, run_at if isinstance(run_at, (int, float)) else at)
        if (since is not None and at < since) or (until is not None and at > until):
            continue
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
    start = since if since is not None else first_at
    end = until if until is not None else last_at
    window = (end - start) if start is not None and end is not None else 0.0
    return found, window
