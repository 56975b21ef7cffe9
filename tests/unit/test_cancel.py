"""Cancelling running jobs: the handler is stopped and the job ends cancelled, not retried."""

from __future__ import annotations

import asyncio
import threading

import evq
from evq.ledger.sqlite import replay
from evq.testing import kinds_of


async def test_cancel_a_running_async_job(ctx):
    started = asyncio.Event()
    stopped = asyncio.Event()

    @ctx.job(max_attempts=5)
    async def long_export(payload):
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped.set()
            raise

    job_id = await long_export.enqueue()
    other = await ctx.enqueue("long_export", delay=1000)
    worker = ctx.worker()
    task = asyncio.create_task(worker.run())
    await started.wait()
    await ctx.cancel(job_id, reason="customer left")
    await asyncio.wait_for(stopped.wait(), 5)
    record = await ctx.get_job(job_id)
    assert record.state is evq.JobState.CANCELLED and record.errors == 0
    cancel = (await ctx.history(job_id))[-1]
    assert cancel.kind == "cancel" and cancel.data["running_on"] == worker.name
    worker.stop()
    await task
    assert await kinds_of(ctx, job_id) == ["enqueue", "dequeue", "run", "cancel"]
    assert (await ctx.get_job(other)).state is evq.JobState.PENDING
    assert replay.check(ctx.path).ok


async def test_a_sync_handler_sees_the_cancel_and_its_result_is_refused(ctx):
    started = threading.Event()
    saw_cancel = threading.Event()

    @ctx.job()
    def crunch(payload, job):
        started.set()
        while not job.cancel_requested:
            saw_cancel.wait(0.001)
        saw_cancel.set()
        return "finished anyway"

    job_id = await crunch.enqueue()
    task = asyncio.create_task(ctx.drain())
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
    await ctx.cancel(job_id)
    await task
    assert saw_cancel.is_set()
    record = await ctx.get_job(job_id)
    assert record.state is evq.JobState.CANCELLED and record.result is None


async def test_cancel_from_another_process_stops_the_handler(db, clock):
    async with evq.Context(db, clock=clock) as server, evq.Context(db, clock=clock) as admin:
        started = asyncio.Event()
        stopped = asyncio.Event()

        async def hold(payload):
            started.set()
            try:
                await asyncio.Event().wait()
            finally:
                stopped.set()

        server.define("hold", hold)
        admin.define("hold", None)
        job_id = await admin.enqueue("hold")
        worker = server.worker()
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), 5)
        await admin.cancel(job_id)
        await asyncio.wait_for(stopped.wait(), 5)
        worker.stop()
        await task
        assert (await admin.get_job(job_id)).state is evq.JobState.CANCELLED
