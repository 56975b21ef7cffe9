"""Time in the ledger moves forward: an event's `at` is read once its commit holds the
write lock and never goes below the newest event's, whatever writer and clock made it;
a write waits for the lock at most busy_timeout; and a lease that ran out while the
ledger could not be written is not rescued before its holder had time to renew."""

from __future__ import annotations

import asyncio
import functools
import itertools
import sqlite3
import time

import pytest

import evq
from evq import admin, rescuing
from evq.ledger import records
from evq.ledger.sqlite import ops, replay, stalls
from evq.testing import captured_logs


def positions_and_times(path) -> list[tuple[int, float]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT position, at FROM evq_events ORDER BY position").fetchall()
    finally:
        conn.close()


async def test_at_never_decreases_across_writers_and_clocks(db):
    ahead = evq.FakeClock(1_800_000_000.0)  # another process's clock, far ahead
    behind = evq.FakeClock(1_700_000_000.0)
    async with evq.Context(db, clock=ahead) as first:
        first.define("job", lambda payload: None)
        await first.enqueue("job")
    async with evq.Context(db, clock=behind) as ctx:
        ctx.define("job", lambda payload: None)
        await ctx.enqueue("job")  # the event loop's own commit
        await ctx.enqueue_many([("job", i) for i in range(50)])  # the writer thread
        with ctx.sync() as producer:
            producer.enqueue("job")  # one statement (enqueue_alone)
            producer.enqueue("job")
            producer.enqueue_many([("job", 1), ("job", 2)])
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN")
        ctx.enqueue_in(conn, "job")
        conn.execute("COMMIT")
        conn.close()
        victim = await ctx.enqueue("job")
        admin.cancel(db, victim, "from the command line")
        ran = await ctx.drain()
    stamped = positions_and_times(db)
    assert len(stamped) > 100
    backwards = [(a, b) for a, b in itertools.pairwise(stamped) if a[1] > b[1]]
    assert not backwards, backwards[:3]
    # Leases and due times follow the ledger's time: the job enqueued at the later
    # clock's time was due for the worker on the earlier clock too.
    assert ran == 57
    assert replay.check(db).ok


async def test_a_write_waits_for_the_lock_at_most_busy_timeout(db):
    async with evq.Context(db, busy_timeout=0.3) as ctx:
        ctx.define("job", lambda payload: None)
        await ctx.enqueue("job")
        before = positions_and_times(db)
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        try:
            with pytest.raises(evq.LedgerLocked, match=r"busy_timeout 0\.3 s") as info:
                await asyncio.wait_for(ctx.enqueue("job"), 10)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert time.monotonic() - started < 3  # not 30 tries of busy_timeout each
        assert str(db) in str(info.value)
        assert positions_and_times(db) == before
        with captured_logs() as logs:
            await ctx.enqueue("job")  # the next commit records the stall
        assert [e["event"] for e in logs if e["event"] == "evq.ledger_stalled"]


async def test_a_lease_that_ran_out_during_a_stall_is_kept_for_the_grace(clock, db):
    async with evq.Context(db, clock=clock, busy_timeout=0.2) as ctx:
        ctx.define("job", lambda payload: None, lease=5)
        job_id = await ctx.enqueue("job")
        await ctx.ledger.writer.run(functools.partial(
            ops.claim, queues=["default"], names_json='["job"]', limit=1, worker="holder",
            lease_seconds=lambda name: 5))
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the stall: nobody can write
        clock.advance(6)  # the holder's lease runs out meanwhile; it cannot renew
        try:
            with pytest.raises(evq.LedgerLocked):
                await ctx.rescue_expired()
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # The stall is over: the rescuer knows the ledger was unwritable, and leaves
        # the lease to its holder for the grace...
        assert await ctx.rescue_expired() == 0
        assert (await ctx.get_job(job_id)).state is evq.JobState.RUNNING
        clock.advance(stalls.GRACE - 0.5)
        assert await ctx.rescue_expired() == 0
        # ...after which a holder that did not renew has lost it.
        clock.advance(1)
        assert await ctx.rescue_expired() == 1
        assert (await ctx.get_job(job_id)).state is evq.JobState.PENDING
    assert replay.check(db).ok


async def test_a_lease_renewed_meanwhile_is_not_rescued(ctx, clock):
    """The rescue is decided, then written later, only if the lease is still the one
    that ran out: a holder that renewed in between keeps its job."""
    from evq.ledger.sqlite import rescues

    ctx.define("job", lambda payload: None, lease=5)
    job_id = await ctx.enqueue("job")
    [held] = await ctx.ledger.writer.run(functools.partial(
        ops.claim, queues=["default"], names_json='["job"]', limit=1, worker="holder",
        lease_seconds=lambda name: 5))
    clock.advance(6)
    found, _ = await ctx.ledger.writer.run(rescues.expired_leases)
    assert [lease.job_id for lease in found] == [job_id]
    attempt = records.Attempt(job_id, "default", "job", held.attempt, "holder")
    await ctx.ledger.writer.run(functools.partial(ops.report, held=attempt, planned=[
        evq.outcomes.Planned("heartbeat", {"lease_until": clock.now() + 5})]))
    decided = [rescuing.rescue_of(lease, ctx.registry.retry_policy("job", 3)) for lease in found]
    assert await ctx.ledger.writer.run(functools.partial(
        rescues.rescue, rescues=decided, rescuer="rescuer")) == 0
    assert (await ctx.get_job(job_id)).worker == "holder"
