"""Durable handlers (a cursor in the ledger) and replay into a handler."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import pytest

import evq


async def wait_for(condition, ctx: evq.Context, timeout: float = 5.0) -> None:
    """Wait until `condition()` holds, checking after each commit the context makes."""
    async def poll() -> None:
        while not condition():
            await ctx.flush_events()
            await asyncio.sleep(0)
    await asyncio.wait_for(poll(), timeout)


async def test_durable_handler_gets_history_then_live_and_resumes_by_name(db, clock):
    seen: list[int] = []
    async with evq.Context(db, clock=clock) as ctx:
        ctx.define("job", lambda p: None)
        await ctx.enqueue("job", 1)
        await ctx.enqueue("job", 2)
        stop = ctx.add_event_handler(lambda e: seen.append(e.position), durable="audit")
        await wait_for(lambda: len(seen) == 2, ctx)
        await ctx.drain()
        await wait_for(lambda: len(seen) == 8, ctx)
        stop()
        assert seen == [e.position for e in await ctx.events()]  # all, in order
    async with evq.Context(db, clock=clock) as ctx:
        ctx.define("job", lambda p: None)
        await ctx.enqueue("job", 3)  # while no consumer runs
        again: list[int] = []
        ctx.add_event_handler(lambda e: again.append(e.position), durable="audit")
        await wait_for(lambda: len(again) == 1, ctx)
        # Resumed after its cursor: nothing twice, nothing missed.
        assert again == [(await ctx.events())[-1].position]
        [state] = await ctx.subscribers()
        assert (state.name, state.lag) == ("audit", 0)


async def test_durable_handler_sees_other_processes_in_order(db, clock):
    async with evq.Context(db, clock=clock) as consumer, evq.Context(db, clock=clock) as other:
        got: list[evq.Event] = []
        consumer.add_event_handler(got.append, kinds=["enqueue"], durable="sink")
        other.define("job", None)
        for i in range(30):
            await other.enqueue("job", i)
        await wait_for(lambda: len(got) == 30, consumer)
        assert [e.data["payload"] for e in got] == list(range(30))


async def test_a_failing_or_slow_durable_handler_never_slows_the_workers(ctx):
    gate = asyncio.Event()
    calls: list[int] = []

    async def flaky_then_slow(event: evq.Event) -> None:
        calls.append(event.position)
        if len(calls) == 1:
            raise RuntimeError("sink is down")
        await gate.wait()

    ctx.add_event_handler(flaky_then_slow, durable="slow-sink")
    ctx.define("job", lambda p: None)
    for i in range(20):
        await ctx.enqueue("job", i)
    assert await ctx.drain() == 20  # the workers finish while the handler is stuck
    [state] = await ctx.subscribers()
    assert state.lag > 0
    # The failed event is retried (after its backoff, or sooner on a commit), never skipped.
    await wait_for(lambda: calls[:2] == [1, 1], ctx)
    gate.set()
    head = len(await ctx.events(limit=10_000))
    await wait_for(lambda: len(set(calls)) == head, ctx, timeout=10)


async def test_one_consumer_per_name_and_takeover_from_the_cursor(db, clock):
    async with evq.Context(db, clock=clock) as a, evq.Context(db, clock=clock) as b:
        a.define("job", None)
        first: list[int] = []
        second: list[int] = []
        stop_first = a.add_event_handler(lambda e: first.append(e.data["payload"]),
                                         durable="one")
        await a.enqueue("job", 1)
        await wait_for(lambda: first == [1], a)
        b.add_event_handler(lambda e: second.append(e.data["payload"]), durable="one")
        await a.enqueue("job", 2)
        await wait_for(lambda: first == [1, 2], a)
        assert second == []  # the name is held by the first consumer
        stop_first()
        await wait_for(lambda: not a.runtime._subscriptions, a)
        await a.enqueue("job", 3)
        await wait_for(lambda: second == [3], b, timeout=15)


async def test_handler_moving_its_cursor_with_its_own_rows_is_effectively_once(db, clock):
    sink = sqlite3.connect(db, check_same_thread=False)
    sink.execute("CREATE TABLE audit (position INTEGER PRIMARY KEY)")
    sink.commit()

    def record(event: evq.Event) -> None:
        sink.execute("INSERT INTO audit VALUES (?)", (event.position,))
        evq.advance_cursor(sink, "ledger-copy", event.position, clock.now())
        sink.commit()

    check = sqlite3.connect(db)  # its own connection: it sees committed rows only
    async with evq.Context(db, clock=clock) as ctx:
        ctx.define("job", None)
        for i in range(5):
            await ctx.enqueue("job", i)
        ctx.add_event_handler(record, durable="ledger-copy")
        await wait_for(lambda: check.execute("SELECT count(*) FROM audit").fetchone()[0] == 5,
                       ctx)
        [state] = await ctx.subscribers()
        assert state.position == state.head  # past the seals too: nothing left to do
    sink.close()
    check.close()


async def test_replay_into_a_handler_with_filters(ctx, clock):
    ctx.define("a", lambda p: None, queue="qa")
    ctx.define("b", lambda p: None, queue="qb")
    first = await ctx.enqueue("a", 1)
    clock.advance(100)
    await ctx.enqueue("b", 2)
    await ctx.drain()
    everything: list[str] = []
    last = await ctx.replay_to(lambda e: everything.append(e.kind))
    assert len(everything) == 8 and last == (await ctx.events(seals=True))[-1].position
    only_b = []
    await ctx.replay_to(lambda e: only_b.append(e.job), queues="qb", kinds=["success"])
    assert only_b == ["b"]
    one_job = []
    await ctx.replay_to(lambda e: one_job.append(e.kind), job_id=first)
    assert one_job == ["enqueue", "dequeue", "run", "success"]
    early = []
    await ctx.replay_to(lambda e: early.append(e.kind), until=clock.now() - 50)
    assert early == ["enqueue"]


async def test_replay_then_follow_keeps_the_handler_live(ctx):
    ctx.define("job", None)
    await ctx.enqueue("job", "old")
    got: list[str] = []
    arrived = asyncio.Event()

    async def note(event: evq.Event) -> None:
        got.append(event.data["payload"])
        if len(got) == 2:
            arrived.set()

    live = asyncio.create_task(ctx.replay_to(note, kinds=["enqueue"], follow=True))
    await ctx.enqueue("job", "new")
    await asyncio.wait_for(arrived.wait(), 5)
    live.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await live
    assert got == ["old", "new"]


def audit_table(db) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE audit (position INTEGER NOT NULL, who TEXT NOT NULL)")
        conn.commit()


def audit_rows(db) -> list[tuple[int, str]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return list(conn.execute("SELECT position, who FROM audit ORDER BY rowid"))


async def non_seal_positions(ctx: evq.Context) -> list[int]:
    return [e.position for e in await ctx.events(limit=10_000)]


async def test_advance_cursor_outside_a_durable_delivery_is_refused(db, clock):
    async with evq.Context(db, clock=clock):
        pass
    audit_table(db)
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO audit VALUES (1, 'me')")
    with pytest.raises(evq.InvalidInput, match="outside a delivery of a durable handler"):
        evq.advance_cursor(conn, "audit-copy", 1, clock.now())
    assert conn.in_transaction  # the caller's transaction is left for it to decide
    conn.rollback()
    conn.close()


async def test_advance_cursor_moves_only_its_own_cursor_and_never_ahead(db, clock):
    refused: list[str] = []
    done = asyncio.Event()
    async with evq.Context(db, clock=clock) as ctx:
        ctx.define("job", None)
        await ctx.enqueue("job", 1)
        sink = sqlite3.connect(db, check_same_thread=False)

        def copy(event: evq.Event) -> None:
            for name, position in (("other", event.position), ("mine", event.position + 5)):
                try:
                    evq.advance_cursor(sink, name, position, clock.now())
                except evq.InvalidInput as exc:
                    refused.append(str(exc))
            sink.rollback()
            done.set()

        ctx.add_event_handler(copy, kinds=["enqueue"], durable="mine")
        await asyncio.wait_for(done.wait(), 5)
        sink.close()
    assert "moves only its own cursor" in refused[0]
    assert "the event being handled (1" in refused[1]


async def test_lease_of_a_durable_handler_must_be_positive(ctx):
    with pytest.raises(evq.InvalidTime, match="lease"):
        ctx.add_event_handler(lambda e: None, durable="x", lease=0)


async def test_a_consumer_that_lost_its_name_cannot_commit_and_stops_delivering(db, clock):
    audit_table(db)
    gate = asyncio.Event()
    lost: list[str] = []
    a_calls: list[int] = []
    sink_a = sqlite3.connect(db, check_same_thread=False)
    sink_b = sqlite3.connect(db, check_same_thread=False)

    async def copy_a(event: evq.Event) -> None:  # async: runs in the consumer's task
        a_calls.append(event.position)
        await gate.wait()  # stalls past its lease
        try:
            with sink_a:
                sink_a.execute("INSERT INTO audit VALUES (?, 'a')", (event.position,))
                evq.advance_cursor(sink_a, "copy", event.position, clock.now())
        except evq.CursorLost as exc:
            lost.append(str(exc))
            raise

    def copy_b(event: evq.Event) -> None:  # sync: runs in a thread
        with sink_b:
            sink_b.execute("INSERT INTO audit VALUES (?, 'b')", (event.position,))
            evq.advance_cursor(sink_b, "copy", event.position, clock.now())

    async with evq.Context(db, clock=clock) as a, evq.Context(db, clock=clock) as b:
        a.define("job", None)
        b.define("job", None)
        await a.enqueue_many(("job", i) for i in range(3))
        a.add_event_handler(copy_a, durable="copy", lease=30)
        await wait_for(lambda: a_calls == [1], a)
        [held] = await a.subscribers()
        clock.advance(31)  # its lease ran out while the handler was stalled
        b.add_event_handler(copy_b, durable="copy", lease=30)
        expected = await non_seal_positions(b)
        await wait_for(lambda: [p for p, _ in audit_rows(db)] == expected, b)
        [taken] = await b.subscribers()
        assert taken.holder != held.holder
        gate.set()  # the old holder wakes up and tries to commit its event
        await wait_for(lambda: bool(lost), a)
        assert "no longer holds the name" in lost[0]
        await b.enqueue("job", 3)
        expected = await non_seal_positions(b)
        await wait_for(lambda: [p for p, _ in audit_rows(db)] == expected, b)
        await a.flush_events()
        assert a_calls == [1]  # it went back to waiting for the name
    assert {who for _, who in audit_rows(db)} == {"b"}
    sink_a.close()
    sink_b.close()


async def test_an_event_whose_effects_committed_is_not_written_again_on_retry(db, clock):
    audit_table(db)
    calls: list[int] = []
    sink = sqlite3.connect(db, check_same_thread=False)

    def copy(event: evq.Event) -> None:
        calls.append(event.position)
        with sink:
            sink.execute("INSERT INTO audit VALUES (?, 'me')", (event.position,))
            evq.advance_cursor(sink, "copy", event.position, clock.now())
        if calls == [1]:
            raise RuntimeError("failed after its commit")  # so it is delivered again

    async with evq.Context(db, clock=clock) as ctx:
        ctx.define("job", None)
        await ctx.enqueue_many(("job", i) for i in range(3))
        ctx.add_event_handler(copy, durable="copy")
        expected = await non_seal_positions(ctx)
        await wait_for(lambda: calls[-1:] == expected[-1:], ctx)
    assert calls[:2] == [1, 1]
    assert [p for p, _ in audit_rows(db)] == expected  # each once
    sink.close()
