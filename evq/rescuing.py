"""Taking back the jobs whose lease ran out, from workers and the orchestrator: each one's
fate is decided outside any write transaction (it runs the job's backoff), then written
`stalls.SETTLE` seconds later, fenced on the lease that ran out (ledger/sqlite/rescues.py)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .ledger import records
from .ledger.sqlite import rescues, stalls
from .logs import get_logger

if TYPE_CHECKING:
    from .context import Context

_log = get_logger("evq.rescue")


async def rescue(ctx: Context, found: Sequence[records.Expired], rescuer: str) -> int:
    """Rescue these expired leases (found by `rescues.expired_leases`); returns how many
    were rescued (a holder that renewed meanwhile keeps its job)."""
    decided = []
    for lease in found:
        item = rescues.rescue_of(lease, ctx.retry_policy(lease.name, lease.max_attempts))
        if item.steps[-1].data.get("reason") == "backoff_failed":
            _log.error("evq.backoff_failed", job_id=lease.job_id, job=lease.name,
                       error=item.steps[-1].data["error"]["message"])
        decided.append(item)
    # Real time, whatever the context's clock: what this gives a chance to is a heartbeat
    # waiting for the write lock right now (see stalls.py).
    await asyncio.sleep(stalls.SETTLE)
    done: int = await ctx.writer.run(functools.partial(
        rescues.rescue, rescues=decided, rescuer=rescuer))
    return done


async def rescue_expired(ctx: Context, rescuer: str) -> int:
    """Find the leases that ran out and rescue them; returns how many were rescued."""
    found, _ = await ctx.writer.run(rescues.expired_leases)
    return await rescue(ctx, found, rescuer) if found else 0
