"""Taking back the jobs whose lease ran out, from workers and the orchestrator: each one's
fate is decided outside any write transaction (it runs the job's backoff), then written
`SETTLE` seconds later, fenced on the lease that ran out (ledger/sqlite/rescues.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .ledger import records
from .ledger.records import Expired, Rescue
from .logs import get_logger
from .outcomes import RetryPolicy, after_lease_expired

if TYPE_CHECKING:
    from .runtime import Runtime

_log = get_logger("evq.rescue")
SETTLE = 0.25  # real seconds between deciding a rescue and applying it (see stalls.py)


def rescue_of(lease: Expired, policy: RetryPolicy) -> Rescue:
    """Decide what a rescue writes for `lease` (runs the backoff: call it outside any
    write transaction)."""
    return Rescue(lease, tuple(after_lease_expired(
        lease.holder, lease.errors, policy, job=f"{lease.job_id} ({lease.name})")))


async def rescue(runtime: Runtime, found: Sequence[records.Expired], rescuer: str) -> int:
    """Rescue these expired leases (found by `rescues.expired_leases`); returns how many
    were rescued (a holder that renewed meanwhile keeps its job)."""
    decided = []
    for lease in found:
        item = rescue_of(lease, runtime.registry.retry_policy(lease.name, lease.max_attempts))
        if item.steps[-1].data.get("reason") == "backoff_failed":
            _log.error("evq.backoff_failed", job_id=lease.job_id, job=lease.name,
                       error=item.steps[-1].data["error"]["message"])
        decided.append(item)
    # Real time, whatever the context's clock: what this gives a chance to is a heartbeat
    # waiting for the write lock right now (see stalls.py).
    await asyncio.sleep(SETTLE)
    return await runtime.ledger.rescue(decided, rescuer)


async def rescue_expired(runtime: Runtime, rescuer: str) -> int:
    """Find the leases that ran out and rescue them; returns how many were rescued."""
    found, _ = await runtime.ledger.expired_leases()
    return await rescue(runtime, found, rescuer) if found else 0
