"""Queues and their rules: concurrency across processes, pause/resume, groups, keys."""

from __future__ import annotations

import asyncio
import functools

import pytest

import evq
from evq.ledger.sqlite import ops, replay
from evq.testing import kinds_of, settle


async def test_queue_concurrency_limit_holds_across_contexts_on_one_file(db, clock):
    running: set[int] = set()
    peak = 0
    gate = asyncio.Event()

    async def hold(payload: int) -> None:
        nonlocal peak
        running.add(payload)
        peak = max(peak, len(running))
        await gate.wait()
        running.discard(payload)

    async with evq.Context(db, clock=clock) as a, evq.Context(db, clock=clock) as b:
        for ctx in (a, b):
            ctx.queue("reports", concurrency=2)
            ctx.define("report", hold, queue="reports")
        for i in range(6):
            await a.enqueue("report", i)
        wa, wb = a.worker(concurrency=10), b.worker(concurrency=10)
        tasks = [asyncio.create_task(w.run(until_idle=True)) for w in (wa, wb)]
        while len(running) < 2:
            await asyncio.sleep(0)
        await settle(a)
        await settle(b)
        assert len(running) == 2
        assert (await a.counts())["running"] == 2
        done = asyncio.Event()
        finished: list[str] = []

        async def count(event: evq.Event) -> None:
            finished.append(event.kind)
            if len(finished) == 6:
                done.set()

        a.add_event_handler(count, kinds=["success"])
        gate.set()
        await asyncio.wait_for(done.wait(), 10)
        wa.stop()
        wb.stop()
        await asyncio.gather(*tasks)
    assert peak == 2


async def test_pause_stops_claims_and_resume_restarts_them(ctx):
    ran: list[int] = []
    ctx.define("job", ran.append, queue="mail")
    ctx.define("other", ran.append)
    await ctx.enqueue("job", 1)
    await ctx.enqueue("other", 2)
    await ctx.pause("mail", reason="maintenance")
    assert await ctx.drain() == 1
    assert ran == [2]
    await ctx.resume("mail")
    assert await ctx.drain() == 1
    assert ran == [2, 1]
    kinds = [e.kind for e in await ctx.events()]
    assert "pause" in kinds and "resume" in kinds
    assert replay.check(ctx.path).ok


async def test_pause_is_seen_by_another_context(db, clock):
    async with evq.Context(db, clock=clock) as admin, evq.Context(db, clock=clock) as server:
        server.define("job", lambda p: None, queue="q")
        admin.define("job", None, queue="q")
        await admin.enqueue("job")
        await admin.pause("q")
        assert await server.drain() == 0
        await admin.resume("q")
        assert await server.drain() == 1


async def test_jobs_of_a_group_run_one_at_a_time(ctx):
    running: dict[str, int] = {}
    peaks: dict[str, int] = {}
    order: list[str] = []

    async def work(payload: dict[str, str]) -> None:
        group = payload["group"]
        running[group] = running.get(group, 0) + 1
        peaks[group] = max(peaks.get(group, 0), running[group])
        order.append(payload["name"])
        for _ in range(5):
            await asyncio.sleep(0)
        running[group] -= 1

    ctx.define("work", work, group=lambda p: p["group"])
    for i in range(3):
        await ctx.enqueue("work", {"group": "a", "name": f"a{i}"})
        await ctx.enqueue("work", {"group": "b", "name": f"b{i}"})
    await ctx.enqueue("work", {"group": "c", "name": "c0"}, group="c")
    assert await ctx.drain(concurrency=10) == 7
    assert peaks == {"a": 1, "b": 1, "c": 1}
    assert [n for n in order if n.startswith("a")] == ["a0", "a1", "a2"]


async def test_group_lock_of_a_dead_holder_is_released_by_its_lease(ctx, clock):
    ctx.define("job", lambda p: p, lease=30, backoff=evq.Fixed(0))
    stuck = await ctx.enqueue("job", "first", group="account-7")
    waiting = await ctx.enqueue("job", "second", group="account-7")
    await ctx.ledger.writer.run(functools.partial(
        ops.claim, queues=["default"], names_json='["job"]', limit=1, worker="dead",
        lease_seconds=lambda n: 30))
    assert await ctx.drain() == 0  # the group is locked by the dead worker's job
    clock.advance(30)
    assert await ctx.drain() == 2
    assert (await ctx.get_job(waiting)).state is evq.JobState.SUCCEEDED
    assert await kinds_of(ctx, stuck) == [
        "enqueue", "dequeue", "run", "rescue", "dequeue", "run", "success"]


async def test_idempotency_key_returns_the_live_job(ctx):
    ctx.define("charge", lambda p: "charged")
    first = await ctx.enqueue("charge", {"cents": 100}, key="order-42")
    again = await ctx.enqueue("charge", {"cents": 100}, key="order-42")
    assert again == first
    both = await ctx.enqueue_many([
        evq.EnqueueRequest("charge", 1, key="order-43"),
        evq.EnqueueRequest("charge", 1, key="order-43"),
    ])
    assert both[0] == both[1] != first
    assert [e.kind for e in await ctx.events()] == ["enqueue", "enqueue"]
    await ctx.drain()
    later = await ctx.enqueue("charge", {"cents": 100}, key="order-42")
    assert later != first  # the first one finished: the key is free again


@pytest.mark.parametrize("bad", ["", "x" * 257, 5])
async def test_bad_key_or_group_is_refused(ctx, bad):
    ctx.define("job", lambda p: None)
    with pytest.raises(evq.InvalidInput):
        await ctx.enqueue("job", key=bad)
    with pytest.raises(evq.InvalidInput):
        await ctx.enqueue("job", group=bad)
    assert await ctx.events() == []
