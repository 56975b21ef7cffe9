"""Run now: a job that waits for a later time is made due at once, from the library
(BullMQ's `job.promote()`), and a worker then runs it."""

from __future__ import annotations

import evq


async def test_a_delayed_job_runs_once_made_due_now(ctx: evq.Context) -> None:
    ran: list[str] = []
    report = ctx.define("report", lambda payload: ran.append(payload))
    job_id = await report.enqueue("monthly", delay=3600)
    await ctx.drain()
    assert ran == []  # not due for an hour
    await ctx.run_now(job_id, "the board meets today")
    await ctx.drain()
    assert ran == ["monthly"]
    kinds = [event.kind for event in await ctx.history(job_id)]
    assert kinds[:2] == ["enqueue", "run_now"] and kinds[-1] == "success"
