"""Rescue: taking back the jobs whose lease ran out, in three steps so that no user code
runs inside a write transaction and a lock stall costs no healthy worker its jobs.

1. `expired_leases`, inside a transaction (a worker's claim, or the orchestrator's
   round), finds them: plain data.
2. `rescue_of`, outside any transaction, decides each one's fate: retry (the job's
   backoff gives when), or expire. A backoff that raises or returns garbage expires the
   job with reason `backoff_failed` instead of failing everybody's claims.
3. `rescue`, in a later transaction (`evq.rescuing.SETTLE` seconds later), writes those fates,
   each only if the lease is still the one that ran out.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...outcomes import Planned
from ..records import Expired, Rescue
from . import flows, sql, stalls
from .tx import Tx


def expired_leases(tx: Tx, limit: int = 500) -> tuple[list[Expired], float | None]:
    """The running jobs whose lease ran out and may be rescued now, and the time at
    which the first one kept from rescue by a lock stall may be (see stalls.py)."""
    rows = tx.rows(sql.EXPIRED_LEASES, (tx.now, limit))
    if not rows:
        return [], None
    spans = stalls.load(tx)
    found: list[Expired] = []
    later: float | None = None
    for row in rows:
        lease = Expired(*row)
        until = stalls.protected_until(spans, lease.lease_until, tx.now)
        if until is None:
            found.append(lease)
        else:
            later = until if later is None else min(later, until)
    return found, later


def rescue(tx: Tx, rescues: Sequence[Rescue], rescuer: str) -> int:
    """Put back (or expire) jobs whose lease ran out, each only if it still runs the same
    attempt under the same lease (its holder did not renew, nobody rescued it), that
    lease has run out by this commit's time, and no lock stall recorded since keeps it
    (stalls.py). Returns how many were rescued."""
    spans: list[stalls.Span] | None = None
    done = 0
    for item in rescues:
        lease = item.lease
        row = tx.one(sql.LEASE_OF, (lease.job_id,))
        if (row is None or row[0] != "running" or row[1] != lease.attempt
                or row[2] != lease.lease_until or lease.lease_until > tx.now):
            continue
        spans = stalls.load(tx) if spans is None else spans
        if stalls.protected_until(spans, lease.lease_until, tx.now) is not None:
            continue
        steps = [Planned(step.kind, step.stamped(tx.now)) for step in item.steps]
        for step in steps:
            tx.append(step.kind, lease.job_id, lease.queue, lease.name, lease.attempt,
                      rescuer, step.data)
        flows.settle_planned(tx, lease.job_id, steps)
        done += 1
    return done
