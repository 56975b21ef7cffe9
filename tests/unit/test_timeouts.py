"""`timeout=` on handlers: an async handler is cancelled; a sync one (a thread, which
cannot be stopped) is told to stop and keeps its job's slot and group until its thread
returns, and its timeout counts only from when its thread starts it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import evq
from evq.ledger.sqlite import replay

COOPERATION_LIMIT = 5.0  # seconds a handler below waits for cancel_requested, at most


def wait_for_cancel(job: evq.Job) -> None:
    """A cooperative sync handler: it stops once told to (or after a bound, so that a
    worker that never tells it cannot hang the test)."""
    deadline = time.monotonic() + COOPERATION_LIMIT
    while not job.cancel_requested and time.monotonic() < deadline:
        time.sleep(0.005)


async def test_a_timed_out_sync_handler_keeps_its_group_until_its_thread_returns(ctx):
    lock = threading.Lock()
    active: list[str] = []
    most_at_once = [0]
    told = []

    def slow(payload, job):
        with lock:
            active.append(job.id)
            most_at_once[0] = max(most_at_once[0], len(active))
        wait_for_cancel(job)
        told.append(job.cancel_requested)
        with lock:
            active.remove(job.id)

    ctx.define("slow", slow, timeout=0.1, max_attempts=1, group="account-7")
    ids = [await ctx.enqueue("slow", i) for i in range(3)]
    await ctx.drain()
    assert most_at_once[0] == 1, "two jobs of one group ran at once"
    assert told == [True, True, True]
    for job_id in ids:
        record = await ctx.get_job(job_id)
        assert record.state is evq.JobState.EXPIRED
        assert record.error["type"] == "TimeoutError"
        assert "timeout of 0.1 s" in record.error["message"]
    assert replay.check(ctx.path).ok


async def test_a_job_waiting_for_a_thread_never_loses_an_attempt_to_its_timeout(
        db: Path, clock: evq.FakeClock):
    ran: list[str] = []

    def handler(payload, job):
        ran.append(payload)
        if payload == "slow":
            wait_for_cancel(job)
        return payload

    async with evq.Context(db, clock=clock, sync_handler_threads=2) as ctx:
        ctx.define("job", handler, timeout=0.1, max_attempts=1)
        slow = [await ctx.enqueue("job", "slow") for _ in range(2)]
        quick = await ctx.enqueue("job", "quick")
        await ctx.drain(concurrency=10)
        record = await ctx.get_job(quick)
        assert (record.state, record.result, record.attempt) == (
            evq.JobState.SUCCEEDED, "quick", 1)
        for job_id in slow:
            assert (await ctx.get_job(job_id)).error["type"] == "TimeoutError"
        assert sorted(ran) == ["quick", "slow", "slow"]


async def test_an_async_handler_is_cancelled_at_its_timeout(ctx):
    cancelled = []

    @ctx.job(timeout=0.05, max_attempts=2, backoff=evq.Fixed(0))
    async def hangs(payload):
        import asyncio
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    job_id = await hangs.enqueue()
    await ctx.drain()
    record = await ctx.get_job(job_id)
    assert (record.state, record.errors) == (evq.JobState.EXPIRED, 2)
    assert record.error["message"] == "the handler ran past its timeout of 0.05 s"
    assert cancelled == [True, True]
