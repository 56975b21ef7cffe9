"""Enqueueing from synchronous code: same events as the async path, no event loop."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

import pytest

import evq
from evq.ledger.sqlite import chain, ops, replay, seals


def _assert_chain_and_replay_hold(db: Path) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert chain.check(conn).ok
    assert replay.check(db).ok


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


def _events(db, *columns: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"SELECT {', '.join(columns)} FROM evq_events ORDER BY position"
                            ).fetchall()
    finally:
        conn.close()


def test_single_enqueues_take_one_statement_and_write_what_the_general_path_writes(
        db, clock, monkeypatch):
    alone: list[bool] = []
    original = ops.enqueue_alone

    def counted(*args: object) -> bool:
        alone.append(original(*args))  # type: ignore[arg-type]
        return alone[-1]

    monkeypatch.setattr(ops, "enqueue_alone", counted)
    ctx = evq.Context(db, clock=clock)
    ctx.define("send", None, queue="mail", max_attempts=4, group="g")
    with ctx.sync() as producer:
        ids = [producer.enqueue("send", {"to": "ada"}, priority=3) for _ in range(3)]
    # the first commit finds the chain's head with a query; the next two need none
    assert alone == [False, True, True]
    rows = _events(db, "kind", "job_id", "queue", "job", "attempt", "worker", "data", "v")
    assert [r[:2] for r in rows] == [("enqueue", ids[0]), ("seal", None),
                                     ("enqueue", ids[1]), ("seal", None),
                                     ("enqueue", ids[2]), ("seal", None)]
    general, fast = rows[0], rows[2]
    assert fast[2:] == general[2:]  # same queue, name, data text, format version
    _assert_chain_and_replay_hold(db)


def test_a_commit_from_another_writer_in_between_is_never_overwritten(db, clock):
    ctx = evq.Context(db, clock=clock)
    ctx.define("job", None)
    with ctx.sync() as first, ctx.sync() as second:
        ids = [first.enqueue("job", 1), first.enqueue("job", 2)]  # the second is alone
        ids.append(second.enqueue("job", 3))  # lands after first's newest seal
        ids.append(first.enqueue("job", 4))  # so this one takes the general path
        ids.append(first.enqueue("job", 5))
    assert [r[0] for r in _events(db, "job_id") if r[0]] == ids
    _assert_chain_and_replay_hold(db)


def test_a_busy_file_sends_the_single_enqueue_down_the_general_path(db, clock):
    ctx = evq.Context(db, clock=clock)
    ctx.define("job", None)
    with ctx.sync() as producer:
        producer.enqueue("job", 1)
        busy = sqlite3.OperationalError("database is locked")
        busy.sqlite_errorcode = sqlite3.SQLITE_BUSY_SNAPSHOT  # type: ignore[attr-defined]

        class Snapshot:  # a commit landed after the statement began
            def execute(self, *args: object) -> None:
                raise busy

        new = ctx.prepare("job", 2)
        last = producer._session._last_seal  # the engine's producer session
        before = (last.position, last.hash)
        assert not ops.enqueue_alone(Snapshot(), new, clock.now(), last)  # type: ignore[arg-type]
        assert (last.position, last.hash) == before
        assert producer.enqueue("job", 3)
    assert len(_events(db, "position")) == 4


def test_the_one_statement_enqueue_seals_exactly_as_a_transaction_does(db, clock,
                                                                        monkeypatch):
    """Both writers of seals (Tx.seal and ops.enqueue_alone) agree byte for byte: the
    chain holds across commits from either, and every seal is of the current scheme."""
    wrote_alone: list[bool] = []
    enqueue_alone = ops.enqueue_alone

    def watched(*args, **kwargs):
        wrote_alone.append(enqueue_alone(*args, **kwargs))
        return wrote_alone[-1]

    monkeypatch.setattr(ops, "enqueue_alone", watched)
    ctx = evq.Context(db, clock=clock)
    ctx.define("send", None)
    with ctx.sync() as producer:
        for i in range(3):
            producer.enqueue("send", i)
        producer.enqueue_many([("send", 3), ("send", 4)])
        producer.enqueue("send", 5)
    assert False in wrote_alone and True in wrote_alone  # both paths were taken
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert {row[0] for row in conn.execute(
            "SELECT v FROM evq_events WHERE kind = 'seal'")} == {seals.SCHEME}
        assert chain.check(conn).complete
