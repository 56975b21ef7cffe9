"""The application's code (backoffs, preflight, group functions, results) never runs
inside a write transaction, and when it raises or returns garbage only that job, or
that call, fails, with an error that names the function: the queue goes on for
everybody else."""

from __future__ import annotations

import functools
import math
import sqlite3

import attrs
import pytest

import evq
from evq.ledger.sqlite import ops, replay
from evq.testing import kinds_of


def broken(errors: int) -> float:
    return 1 / 0


BAD_BACKOFFS = [
    pytest.param(broken, "ZeroDivisionError", id="raises"),
    pytest.param(lambda errors: "soon", "'soon'", id="text"),
    pytest.param(lambda errors: math.nan, "nan", id="nan"),
    pytest.param(lambda errors: -1, "-1", id="negative"),
    pytest.param(lambda errors: math.inf, "inf", id="inf"),
    pytest.param(lambda errors: None, "None", id="none"),
]


async def event_count(ctx: evq.Context) -> int:
    return len(await ctx.events(limit=100_000, seals=True))


@pytest.mark.parametrize(("backoff", "shown"), BAD_BACKOFFS)
async def test_a_bad_backoff_fails_its_job_and_the_queue_goes_on(ctx, clock, backoff, shown):
    def flaky(payload):
        raise ConnectionError("down")

    ctx.define("flaky", flaky, backoff=backoff, lease=10)
    ctx.define("fine", lambda payload: "ok")
    bad = await ctx.enqueue("flaky")
    await ctx.drain()
    record = await ctx.get_job(bad)
    assert record.state is evq.JobState.FAILED
    assert await kinds_of(ctx, bad) == ["enqueue", "dequeue", "run", "error", "fail"]
    fail = (await ctx.history(bad))[-1]
    assert fail.data["reason"] == "backoff_failed"
    assert fail.data["error"]["type"] == "CallbackError"
    message = fail.data["error"]["message"]
    assert "backoff" in message and bad in message and "flaky" in message and shown in message
    # The lease that job had is long gone; a later job is not held up by it.
    clock.advance(60)
    good = await ctx.enqueue("fine")
    await ctx.drain()
    assert (await ctx.get_job(good)).state is evq.JobState.SUCCEEDED
    assert replay.check(ctx.path).ok


async def test_a_bad_backoff_met_by_a_rescue_expires_that_job_only(ctx, clock):
    ctx.define("flaky", lambda payload: None, backoff=broken, lease=5)
    ctx.define("fine", lambda payload: "ok")
    stranded = await ctx.enqueue("flaky")
    await ctx.ledger.writer.run(functools.partial(
        ops.claim, queues=["default"], names_json='["flaky"]', limit=1, worker="gone",
        lease_seconds=lambda name: 5))
    clock.advance(6)  # its worker died: the lease has run out
    good = await ctx.enqueue("fine")
    with evq.testing.captured_logs() as logs:
        await ctx.drain()
    assert (await ctx.get_job(good)).state is evq.JobState.SUCCEEDED
    assert (await ctx.get_job(stranded)).state is evq.JobState.EXPIRED
    assert await kinds_of(ctx, stranded) == ["enqueue", "dequeue", "run", "rescue", "expire"]
    expire = (await ctx.history(stranded))[-1]
    assert expire.data["reason"] == "backoff_failed"
    assert "ZeroDivisionError" in expire.data["error"]["message"]
    assert any(e["event"] == "evq.backoff_failed" and e["job_id"] == stranded for e in logs)
    assert replay.check(ctx.path).ok


@attrs.define
class Point:
    x: int


def unreadable_result() -> Point:
    point = Point(1)
    object.__delattr__(point, "x")  # reading the field raises AttributeError
    return point


def nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("result", [
    pytest.param(unreadable_result, id="attrs-field-raises"),
    pytest.param(lambda: nested(100_000), id="recursion"),
])
async def test_a_result_that_cannot_be_encoded_fails_its_job_cleanly(ctx, result):
    ctx.define("odd", lambda payload: result())
    ctx.define("fine", lambda payload: "ok")
    bad = await ctx.enqueue("odd")
    good = await ctx.enqueue("fine")
    assert await ctx.drain() == 2
    record = await ctx.get_job(bad)
    assert record.state is evq.JobState.FAILED
    # (a result nested this deep is refused by the depth limit before encoding)
    assert any(text in record.error["message"]
               for text in ("cannot be stored", "nested more than 100 levels"))
    assert (await ctx.get_job(good)).state is evq.JobState.SUCCEEDED
    assert replay.check(ctx.path).ok


def preflight_raises(job, ctx, queue):
    return job.payload["missing"]


@pytest.mark.parametrize(("check", "shown"), [
    pytest.param(preflight_raises, "KeyError", id="raises"),
    pytest.param(lambda job, ctx, queue: 0, "returned 0", id="zero"),
    pytest.param(lambda job, ctx, queue: {"ok": True}, "returned {'ok': True}", id="dict"),
    pytest.param(lambda job, ctx, queue: "", "returned ''", id="empty-reason"),
])
async def test_a_bad_on_before_add_is_a_callback_error_and_writes_nothing(ctx, check, shown):
    ctx.define("job", lambda payload: None, on_before_add=check)
    before = await event_count(ctx)
    with pytest.raises(evq.CallbackError, match="on_before_add") as info:
        await ctx.enqueue("job", {"a": 1})
    assert shown in str(info.value) and "'job'" in str(info.value)
    with pytest.raises(evq.CallbackError, match="on_before_add"):
        await ctx.enqueue_many([("job", {"a": 2})])
    with ctx.sync() as producer, pytest.raises(evq.CallbackError, match=shown):
        producer.enqueue("job", {"a": 3})
    conn = sqlite3.connect(ctx.path, isolation_level=None)
    conn.execute("BEGIN")
    with pytest.raises(evq.CallbackError, match=shown):
        ctx.enqueue_in(conn, "job", {"a": 4})
    conn.execute("COMMIT")
    conn.close()
    assert await event_count(ctx) == before


def group_raises(payload):
    return payload["tenant"]


@pytest.mark.parametrize(("group", "shown"), [
    pytest.param(group_raises, "KeyError", id="raises"),
    pytest.param(lambda payload: 42, "returned 42", id="number"),
    pytest.param(lambda payload: "", "returned ''", id="empty"),
])
async def test_a_bad_group_function_is_a_callback_error_and_writes_nothing(ctx, group, shown):
    ctx.define("job", lambda payload: None, group=group)
    before = await event_count(ctx)
    with pytest.raises(evq.CallbackError, match="group function") as info:
        await ctx.enqueue("job", {})
    assert shown in str(info.value) and "'job'" in str(info.value)
    with ctx.sync() as producer, pytest.raises(evq.CallbackError, match=shown):
        producer.enqueue("job", {})
    assert await event_count(ctx) == before


async def test_a_schedule_whose_group_function_raises_does_not_stop_the_others(ctx, clock):
    ctx.define("tick", lambda payload: None, repeat=60)
    ctx.define("tock", lambda payload: None, repeat=60, group=group_raises)
    orchestrator = ctx.orchestrator()
    with evq.testing.captured_logs() as logs:
        first = await orchestrator.tick()
        clock.advance(60)
        second = await orchestrator.tick()
    assert [f.kind for f in first.fired] == ["schedule", "schedule_failed"]
    assert [f.kind for f in second.fired] == ["schedule", "schedule_failed"]
    failed = [e for e in await ctx.events(limit=1000)
              if e.kind == "schedule" and e.data.get("reason") == "job_not_prepared"]
    assert len(failed) == 2 and "KeyError" in failed[0].data["error"]["message"]
    assert any(e["event"] == "evq.schedule_failed" for e in logs)
    assert await ctx.drain() == 2  # tick's two jobs
    assert replay.check(ctx.path).ok


@pytest.mark.parametrize(("answer", "shown"), [
    pytest.param(lambda payload, job: 1 / 0, "ZeroDivisionError", id="raises"),
    pytest.param(lambda payload, job: "maybe", "'maybe'", id="text"),
    pytest.param(lambda payload, job: 0, "0", id="zero"),
])
async def test_a_bad_okay_to_run_fails_that_attempt_and_the_queue_goes_on(ctx, answer, shown):
    ran: list[str] = []
    ctx.define("checked", ran.append, okay_to_run=answer, max_attempts=2,
               backoff=evq.Fixed(0))
    ctx.define("fine", lambda payload: "ok")
    bad = await ctx.enqueue("checked", "checked")
    good = await ctx.enqueue("fine")
    await ctx.drain()
    assert ran == []  # its handler never ran
    assert await kinds_of(ctx, bad) == ["enqueue", "dequeue", "error", "dequeue", "error",
                                        "expire"]
    error = (await ctx.history(bad))[2].data["error"]
    assert error["type"] == "CallbackError"
    assert "okay_to_run" in error["message"] and bad in error["message"]
    assert shown in error["message"]
    assert (await ctx.get_job(good)).state is evq.JobState.SUCCEEDED
    assert replay.check(ctx.path).ok


async def test_okay_to_run_answering_none_runs_the_job(ctx):
    ctx.define("checked", lambda payload: "ran", okay_to_run=lambda payload, job: None)
    job_id = await ctx.enqueue("checked")
    await ctx.drain()
    assert (await ctx.get_job(job_id)).result == "ran"
