"""Event handlers: committed events, in ledger order, from every connection on the file."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

import evq
from evq.testing import captured_logs


async def test_handlers_get_every_event_in_order_with_the_envelope(ctx):
    seen: list[evq.Event] = []
    ctx.add_event_handler(seen.append)
    ctx.define("job", lambda p: {"echo": p}, queue="mail")
    job_id = await ctx.enqueue("job", {"n": 1})
    await ctx.drain()
    await ctx.flush_events()
    assert [e.kind for e in seen] == ["enqueue", "dequeue", "run", "success"]
    assert [e.position for e in seen] == sorted(e.position for e in seen)
    first = seen[0]
    assert (first.job_id, first.queue, first.job, first.data["payload"]) == (
        job_id, "mail", "job", {"n": 1})
    assert seen[-1].data["result"] == {"echo": {"n": 1}}
    assert seen[1].worker and seen[1].attempt == 1
    assert [e.position for e in seen] == [e.position for e in await ctx.events()]


async def test_kind_filter_and_async_handlers_and_unsubscribe(ctx):
    got: list[str] = []

    async def on_success(event: evq.Event) -> None:
        await asyncio.sleep(0)
        got.append(event.kind)

    remove = ctx.add_event_handler(on_success, kinds=["success"])
    ctx.define("job", lambda p: None)
    await ctx.enqueue("job")
    await ctx.drain()
    await ctx.flush_events()
    assert got == ["success"]
    remove()
    await ctx.enqueue("job")
    await ctx.drain()
    await ctx.flush_events()
    assert got == ["success"]


async def test_a_raising_handler_is_logged_and_breaks_nothing(ctx):
    good: list[str] = []

    def bad(event: evq.Event) -> None:
        raise ValueError("handler bug")

    ctx.add_event_handler(bad)
    ctx.add_event_handler(lambda e: good.append(e.kind))
    ctx.define("job", lambda p: "ok")
    with captured_logs() as logs:
        job_id = await ctx.enqueue("job")
        await ctx.drain()
        await ctx.flush_events()
    assert good == ["enqueue", "dequeue", "run", "success"]
    assert (await ctx.get_job(job_id)).state is evq.JobState.SUCCEEDED
    failures = [entry for entry in logs if entry["event"] == "evq.event_handler_failed"]
    assert len(failures) == 4 and failures[0]["kind"] == "enqueue"


async def test_refused_enqueue_delivers_nothing(ctx):
    seen: list[evq.Event] = []
    ctx.add_event_handler(seen.append)
    ctx.define("job", lambda p: None)
    with pytest.raises(evq.InvalidPayload):
        await ctx.enqueue_many([("job", 1), ("job", {2})])
    await ctx.flush_events()
    assert seen == []


async def test_enqueue_in_callers_transaction_commits_with_their_rows(ctx, db):
    seen: list[evq.Event] = []
    ctx.add_event_handler(seen.append)
    ran: list[int] = []
    ctx.define("receipt", lambda p: ran.append(p["order"]))
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.commit()

    conn.execute("INSERT INTO orders (id) VALUES (1)")
    kept = ctx.enqueue_in(conn, "receipt", {"order": 1})
    conn.commit()

    conn.execute("INSERT INTO orders (id) VALUES (2)")
    dropped = ctx.enqueue_in(conn, "receipt", {"order": 2})
    conn.rollback()
    conn.close()

    assert await ctx.get_job(kept) is not None
    assert await ctx.get_job(dropped) is None
    assert await ctx.history(dropped) == []
    await ctx.drain()
    assert ran == [1]
    await ctx.flush_events()
    assert [e.job_id for e in seen if e.kind == "enqueue"] == [kept]


async def test_enqueue_in_refuses_without_a_transaction_or_on_another_file(ctx, tmp_path):
    ctx.define("job", lambda p: None)
    conn = sqlite3.connect(ctx.path)
    with pytest.raises(evq.InvalidInput, match="transaction"):
        ctx.enqueue_in(conn, "job", {})
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE t (x)")
    other.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(evq.InvalidInput, match="same file"):
        ctx.enqueue_in(other, "job", {})
    conn.close()
    other.close()


async def test_events_from_another_context_on_the_file_reach_handlers(db, clock):
    async with evq.Context(db, clock=clock) as consumer, evq.Context(db, clock=clock) as producer:
        seen: list[str] = []
        arrived = asyncio.Event()

        async def note(event: evq.Event) -> None:
            seen.append(event.kind)
            arrived.set()

        consumer.add_event_handler(note)
        producer.define("job", lambda p: None)
        await producer.enqueue("job", 1)
        await asyncio.wait_for(arrived.wait(), 5)
        assert seen == ["enqueue"]


async def test_worker_logs_carry_job_context(ctx):
    ctx.define("job", lambda p: (_ for _ in ()).throw(RuntimeError("x")), max_attempts=1)
    with captured_logs() as logs:
        job_id = await ctx.enqueue("job")
        await ctx.drain(name="w-1")
    [entry] = [e for e in logs if e["event"] == "evq.job_error"]
    assert entry["job_id"] == job_id
    assert (entry["queue"], entry["job"], entry["attempt"], entry["worker"]) == (
        "default", "job", 1, "w-1")


async def test_ctx_events_returns_limit_events_and_pages_through_them_all(ctx):
    """`limit` counts the events returned (seals hidden), so paging by the last
    position reads every event once, and a page of 3 holds 3."""
    ctx.define("job", None)
    for n in range(5):
        await ctx.enqueue("job", n)  # a commit each: an enqueue and its seal
    everything = await ctx.events(limit=100)
    assert [e.kind for e in everything] == ["enqueue"] * 5
    assert len(await ctx.events(limit=3)) == 3
    pages, after = [], 0
    while page := await ctx.events(after=after, limit=2):
        pages.append(page)
        after = page[-1].position
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [e.position for p in pages for e in p] == [e.position for e in everything]
    with_seals = await ctx.events(limit=4, seals=True)
    assert [e.kind for e in with_seals] == ["enqueue", "seal", "enqueue", "seal"]
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(evq.InvalidInput, match="limit"):
            await ctx.events(limit=bad)
