"""Enqueueing from synchronous code: same events as the async path, no event loop."""

from __future__ import annotations

import threading

import pytest

import evq
from evq.ledger import replay


def test_sync_enqueue_without_an_event_loop_writes_the_same_events(db, clock):
    ctx = evq.Context(db, clock=clock)
    ctx.define("send", None, queue="mail", max_attempts=4)
    with ctx.sync() as producer:
        job_id = producer.enqueue("send", {"to": "ada"}, delay=5, priority=2, key="k1")
        assert producer.enqueue("send", {"to": "ada"}, key="k1") == job_id
        ids = producer.enqueue_many([("send", 1), ("send", 2)])
        with pytest.raises(evq.InvalidPayload, match="item 1"):
            producer.enqueue_many([("send", 3), ("send", {4})])
        with pytest.raises(evq.UnknownJob):
            producer.enqueue("nope", {})
    assert len(ids) == 2
    import sqlite3

    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT kind, job_id, queue, job, data FROM evq_events "
                        "WHERE kind != 'seal'").fetchall()
    conn.close()
    assert [r[0] for r in rows] == ["enqueue"] * 3
    import json

    first = json.loads(rows[0][4])
    assert first == {"payload": {"to": "ada"}, "run_at": clock.now() + 5, "priority": 2,
                     "max_attempts": 4, "key": "k1"}
    assert replay.check(db).ok


async def test_jobs_from_a_sync_producer_run_on_an_async_worker(db, clock):
    ran: list[int] = []
    async with evq.Context(db, clock=clock) as ctx:
        ctx.define("job", ran.append)
        with ctx.sync() as producer:
            producer.enqueue("job", 1)
        await ctx.drain()
    assert ran == [1]


def test_sync_producer_is_thread_safe(db):
    ctx = evq.Context(db)
    ctx.define("job", None)
    with ctx.sync() as producer:
        ids: list[str] = []

        def burst() -> None:
            for i in range(50):
                ids.append(producer.enqueue("job", i))

        threads = [threading.Thread(target=burst) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(set(ids)) == 200
    assert replay.check(db).ok


def test_sync_preflight_refuses_and_async_preflight_is_an_error(db):
    ctx = evq.Context(db)
    ctx.define("a", None, on_before_add=lambda job, c, q: "closed")

    async def later(job, c, q):
        return True

    ctx.define("b", None, on_before_add=later)
    with ctx.sync() as producer:
        with pytest.raises(evq.JobRejected, match="closed"):
            producer.enqueue("a", 1)
        with pytest.raises(evq.InvalidInput, match="async on_before_add"):
            producer.enqueue("b", 1)


def test_closed_producer_says_so(db):
    ctx = evq.Context(db)
    ctx.define("job", None)
    producer = ctx.sync()
    producer.close()
    with pytest.raises(evq.ContextClosed):
        producer.enqueue("job", 1)
