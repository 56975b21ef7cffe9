"""Times the ledger stores lie from 1970 to the end of 9999 (UTC): a time or delay that
would leave that range is refused with InvalidTime naming it, and a retry time computed
beyond it (a huge backoff) waits until 9999-12-31T23:59:59Z instead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

import evq

LATEST_TIME = 253402300799.0  # 9999-12-31T23:59:59Z

END_OF_9999 = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


@pytest.mark.parametrize(("when", "shown"), [
    (1e18, r"1e\+18"),
    (253402300800.0, "253402300800.0"),  # 10000-01-01T00:00:00Z
    (-1.0, "-1.0"),
    ("1969-12-31T23:59:59Z", "1969-12-31"),
    (datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5))), "9999"),
    ("10000-01-01T00:00:00Z", "10000-01-01"),
])
async def test_a_run_at_outside_the_range_is_refused_and_nothing_is_written(
        ctx, when, shown):
    ctx.define("work", None)
    with pytest.raises(evq.InvalidTime, match=shown):
        await ctx.enqueue("work", 1, run_at=when)
    with pytest.raises(evq.InvalidTime, match=shown):
        ctx.sync().enqueue("work", 1, run_at=when)
    assert await ctx.jobs() == [] and await ctx.events() == []


async def test_a_delay_that_ends_past_9999_is_refused(ctx, clock):
    ctx.define("work", None)
    for delay in (1e308, 253402300800.0, 253402300799.0 - clock.now() + 1):
        with pytest.raises(evq.InvalidTime, match="9999"):
            await ctx.enqueue("work", 1, delay=delay)
    assert await ctx.jobs() == []
    with pytest.raises(evq.InvalidTime, match="1e\\+308"):
        evq.Fixed(1e308)


async def test_the_edges_of_the_range_are_accepted(ctx, clock):
    ctx.define("work", None)
    first = await ctx.enqueue("work", 1, run_at=0)
    last = await ctx.enqueue("work", 2, run_at="9999-12-31T23:59:59.999Z")
    later = await ctx.enqueue("work", 3, delay=LATEST_TIME - clock.now())
    records = {job.id: job for job in await ctx.jobs()}
    assert records[first].run_at == datetime(1970, 1, 1, tzinfo=UTC)
    assert records[last].run_at.year == 9999
    assert records[later].run_at == END_OF_9999


async def test_a_huge_requeue_waits_until_the_end_of_9999_and_a_huge_backoff_is_refused(ctx):
    # A backoff is the application's function: one that returns more than 100 years (or
    # inf) is garbage and ends its job (see test_user_code.py), it is not clamped.
    @ctx.job(backoff=lambda errors: 1e308)
    def flaky(payload: int) -> None:
        raise RuntimeError("again")

    @ctx.job()
    def later(payload: int, job: evq.Job) -> None:
        job.requeue(LATEST_TIME - 1)  # a valid delay, but past 9999 from now

    @ctx.job(max_attempts=1)
    def never(payload: int, job: evq.Job) -> None:
        job.requeue(1e308)  # refused in the handler: an error, recorded as one

    ids = [await flaky.enqueue(1), await later.enqueue(3), await never.enqueue(4)]
    await ctx.drain()
    bad_backoff = await ctx.get_job(ids[0])
    assert bad_backoff is not None and bad_backoff.state is evq.JobState.FAILED
    requeued = await ctx.get_job(ids[1])
    assert requeued is not None and requeued.state is evq.JobState.PENDING
    assert requeued.run_at == END_OF_9999
    refused = await ctx.get_job(ids[2])
    assert refused is not None and refused.state is evq.JobState.EXPIRED
    assert refused.error is not None and refused.error["type"] == "InvalidTime"
    assert len(await ctx.jobs()) == 3
