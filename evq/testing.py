"""Helpers for testing code that uses evq: a fake clock, running queued jobs until nothing
is due, and looking at the events a job produced."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from .clock import FakeClock
from .context import Context
from .events import Event

__all__ = ["FakeClock", "captured_logs", "kinds_of", "run_until_idle", "settle", "timeline"]


async def run_until_idle(ctx: Context, *, queues: Iterable[str] | None = None,
                         concurrency: int = 10) -> int:
    """Run every job that is due now (and what those jobs make due now), then return
    how many ran. With a FakeClock, advance the clock to make later jobs due."""
    return await ctx.drain(queues=queues, concurrency=concurrency)


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
        await ctx.ledger.flush()
        await ctx.flush_events()



class _Collect(logging.Handler):
    def __init__(self, into: list[dict[str, Any]]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "evq", None)
        if fields is not None:
            self.into.append({**fields, "level": record.levelname.lower()})


@contextlib.contextmanager
def captured_logs(level: int = logging.DEBUG) -> Iterator[list[dict[str, Any]]]:
    """Collect evq's log entries (dicts: `event`, the bound fields, `level`) while the
    block runs, whatever the application's logging configuration."""
    entries: list[dict[str, Any]] = []
    logger = logging.getLogger("evq")
    handler = _Collect(entries)
    before = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield entries
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)
