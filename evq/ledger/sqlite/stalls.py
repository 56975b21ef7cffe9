"""Lock stalls, and the rule that keeps one from costing a healthy worker its jobs.

A stall: something holds the ledger's write lock for long (a long transaction in any
process, a backup, an operator's `sqlite3` shell), and nobody can write meanwhile. A
worker whose handler runs through it cannot renew its lease; when it ends, that worker's
heartbeat and another process's rescue race for the lock. The rule:

- A writer that waited STALL seconds or more for the write lock (real seconds, on a
  monotonic clock), or gave up waiting (LedgerLocked) before it got it, knows the ledger
  could not be written from when it asked until it got the lock. It records that span
  in the transaction it then commits, starting no later than the newest event before
  it: the ledger took no commit in between, and nobody can tell a quiet ledger from a
  stalled one, so the span is taken to begin there.
- A lease that ran out at or after the start of a recorded span is not rescued until
  GRACE seconds after the span's end: its holder gets that long, with the ledger
  writable again, to renew. (A lease that ran out before the span began ran out while
  the ledger could still be written.)
- A rescue is decided in one transaction and applied in another, `evq.rescuing.SETTLE`
  real seconds later, and only if the lease is still the one that ran out (see
  `rescues.rescue`). In
  between, a heartbeat that was waiting for the lock renews, and a writer that waited
  records its span. This covers the rescuer that comes fresh just as a stall ends: it
  waited for nothing, so it knows of no stall.

The spans live in `evq_meta`, not in the event log (they say nothing about any job),
and are dropped once their grace is over. FakeClock-driven code is unaffected: without
a real wait nothing is recorded, and a lease is rescued as soon as it has run out (plus
`evq.rescuing.SETTLE` real seconds).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from . import sql

if TYPE_CHECKING:
    from .tx import Tx

STALL = 0.5  # seconds of waiting for the write lock that count as a stall
GRACE = 5.0  # seconds a holder gets to renew after a stall, before its lease is rescued
META_KEY = "stalls"

Span = tuple[float, float]


def record(tx: Tx, waited: float) -> Span:
    """Record in this transaction that its writer could not write for the `waited`
    seconds before it got the lock (`tx.now`). Returns the span recorded."""
    start = tx.now - waited
    if tx.last_at is not None:
        start = min(start, tx.last_at)
    spans = [s for s in load(tx) if s[1] + GRACE > tx.now]
    merged: Span = (start, tx.now)
    kept = []
    for span in spans:
        if span[0] <= merged[1] and merged[0] <= span[1]:
            merged = (min(span[0], merged[0]), max(span[1], merged[1]))
        else:
            kept.append(span)
    kept.append(merged)
    tx.conn.execute(sql.SET_META, (META_KEY, json.dumps(sorted(kept))))
    return merged


def load(tx: Tx) -> list[Span]:
    """The recorded spans (robust to any value stored there: none if unreadable)."""
    row = tx.one(sql.GET_META, (META_KEY,))
    if row is None:
        return []
    try:
        return [(float(a), float(b)) for a, b in json.loads(row[0])]
    except (TypeError, ValueError):
        return []


def protected_until(spans: list[Span], lease_until: float, now: float) -> float | None:
    """Until when a lease that ran out at `lease_until` is kept from rescue at `now`, or
    None if it may be rescued."""
    ends = [end + GRACE for start, end in spans if start <= lease_until and now < end + GRACE]
    return max(ends) if ends else None
