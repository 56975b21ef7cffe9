"""Helpers for testing code that uses evq: a fake clock, running queued jobs until nothing
is due, and looking at the events a job produced."""

from __future__ import annotations

import asyncio
from typing import Any

from .clock import FakeClock
from .context import Context
from .events import Event

__all__ = ["FakeClock", "kinds_of", "run_until_idle", "settle", "timeline"]


async def run_until_idle(ctx: Context, **worker_options: Any) -> int:
    """Run every job that is due now (and what those jobs make due now), then return
    how many ran. With a FakeClock, advance the clock to make later jobs due."""
    return await ctx.drain(**worker_options)


async def timeline(ctx: Context, job_id: str) -> list[Event]:
    """Every event of one job, oldest first."""
    return await ctx.history(job_id)


async def kinds_of(ctx: Context, job_id: str) -> list[str]:
    """The kinds of a job's events, oldest first: handy for one-line assertions such as
    `assert await kinds_of(ctx, id) == ["enqueue", "dequeue", "run", "success"]`."""
    return [event.kind for event in await ctx.history(job_id)]


async def settle(ctx: Context, rounds: int = 3) -> None:
    """Let every task that can make progress do so, and wait until everything they handed
    to the ledger is committed and delivered to event handlers. Use it after advancing a
    FakeClock while a worker runs in the background."""
    for _ in range(rounds):
        for _ in range(10):
            await asyncio.sleep(0)
        await ctx.writer.run(_nothing)
        await ctx.flush_events()


def _nothing(tx: Any) -> None:
    return None
