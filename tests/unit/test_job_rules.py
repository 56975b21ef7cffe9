"""Per-job rules: preflight, requeue_on_failure, the exhausted-attempts hook."""

from __future__ import annotations

import asyncio
import functools
import sqlite3

import pytest

import evq
from evq.ledger.sqlite import ops, replay
from evq.testing import kinds_of


async def test_on_before_add_refusal_adds_nothing_and_records_a_reject(ctx):
    def only_premium(job, ctx, queue_name):
        assert queue_name == "reports"
        return True if job.payload["plan"] == "premium" else "plan is not premium"

    ctx.define("report", lambda p: "made", queue="reports", on_before_add=only_premium)
    kept = await ctx.enqueue("report", {"plan": "premium"})
    with pytest.raises(evq.JobRejected, match="plan is not premium") as info:
        await ctx.enqueue("report", {"plan": "free"})
    [rejected_id] = info.value.reasons
    assert await ctx.get_job(rejected_id) is None
    reject = (await ctx.history(rejected_id))[0]
    assert (reject.kind, reject.data["reason"], reject.data["payload"]) == (
        "reject", "plan is not premium", {"plan": "free"})
    assert await ctx.drain() == 1
    assert (await ctx.get_job(kept)).result == "made"
    assert replay.check(ctx.path).ok


async def test_async_on_before_add_and_bulk_is_all_or_nothing(ctx):
    async def no_odd(job, ctx, queue_name):
        await asyncio.sleep(0)
        return job.payload % 2 == 0

    ctx.define("even", lambda p: p, on_before_add=no_odd)
    with pytest.raises(evq.JobRejected) as info:
        await ctx.enqueue_many([("even", 2), ("even", 3), ("even", 4)])
    assert len(info.value.reasons) == 1
    assert [e.kind for e in await ctx.events()] == ["reject"]
    assert await ctx.jobs() == []


async def test_enqueue_in_runs_a_sync_preflight(ctx, db):
    ctx.define("job", lambda p: None, on_before_add=lambda job, c, q: job.payload != "no")
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(evq.JobRejected):
        ctx.enqueue_in(conn, "job", "no")
    ctx.enqueue_in(conn, "job", "yes")
    conn.commit()
    conn.close()
    assert [e.kind for e in await ctx.events()] == ["reject", "enqueue"]


async def test_okay_to_run_defers_without_using_an_attempt(ctx, clock):
    ready = {"encoder": False}
    ran = []
    ctx.define("encode", ran.append, max_attempts=1, requeue_delay=45,
               okay_to_run=lambda payload, job: ready["encoder"])
    job_id = await ctx.enqueue("encode", "video")
    await ctx.drain()
    record = await ctx.get_job(job_id)
    assert record.state is evq.JobState.PENDING and record.errors == 0 and ran == []
    assert record.run_at.timestamp() == pytest.approx(clock.now() + 45)
    ready["encoder"] = True
    clock.advance(45)
    await ctx.drain()
    assert ran == ["video"]
    assert await kinds_of(ctx, job_id) == [
        "enqueue", "dequeue", "defer", "dequeue", "run", "success"]


async def test_a_defer_is_not_a_run_nor_an_attempt(ctx, clock):
    """A max_attempts=1 job deferred three times runs as its first attempt, and the
    ledger holds one `run`: a defer neither uses an attempt nor dilutes the stats."""
    answers = iter([False, False, False, True])
    seen: list[int] = []
    ctx.define("encode", lambda payload, job: seen.append(job.attempt), max_attempts=1,
               requeue_delay=5, okay_to_run=lambda payload, job: next(answers))
    job_id = await ctx.enqueue("encode", "video")
    for _ in range(3):
        await ctx.drain()
        record = await ctx.get_job(job_id)
        assert (record.state, record.attempt) == (evq.JobState.PENDING, 0)
        clock.advance(5)
    await ctx.drain()
    record = await ctx.get_job(job_id)
    assert seen == [1]
    assert (record.state, record.attempt, record.errors) == (evq.JobState.SUCCEEDED, 1, 0)
    kinds = await kinds_of(ctx, job_id)
    assert kinds.count("run") == 1 and kinds.count("defer") == 3
    defers = [e for e in await ctx.history(job_id) if e.kind == "defer"]
    assert [e.data["attempt_before"] for e in defers] == [0, 0, 0]
    assert replay.check(ctx.path).ok


async def test_a_job_cancelled_while_okay_to_run_is_asked_never_runs(ctx):
    ran: list[str] = []

    async def ask(payload, job):
        await ctx.cancel(job.id)
        return True

    ctx.define("encode", ran.append, okay_to_run=ask)
    job_id = await ctx.enqueue("encode", "video")
    await ctx.drain()
    assert ran == []
    assert await kinds_of(ctx, job_id) == ["enqueue", "dequeue", "cancel"]


async def test_requeue_on_failure_puts_a_failed_job_back_after_the_delay(ctx, clock):
    @ctx.job(requeue_on_failure=True, max_attempts=2)
    async def sync_crm(payload, job):
        job.failed("crm is down")

    job_id = await sync_crm.enqueue()
    await ctx.drain()
    record = await ctx.get_job(job_id)
    assert record.state is evq.JobState.PENDING
    assert record.run_at.timestamp() == pytest.approx(clock.now() + 10)
    clock.advance(10)
    await ctx.drain()
    assert (await ctx.get_job(job_id)).state is evq.JobState.EXPIRED
    error = next(e for e in await ctx.history(job_id) if e.kind == "error")
    assert error.data["retry_in"] == 10


async def test_requeue_on_failure_with_a_custom_delay(ctx, clock):
    ctx.define("job", lambda p, job: job.failed("no"), requeue_on_failure=2.5)
    job_id = await ctx.enqueue("job")
    await ctx.drain()
    assert (await ctx.get_job(job_id)).run_at.timestamp() == pytest.approx(clock.now() + 2.5)


async def test_exhausted_hook_runs_once_and_is_recorded(ctx):
    seen: list[evq.JobRecord] = []
    ctx.define("doomed", lambda p: 1 / 0, max_attempts=1,
               on_max_attempts_exhausted=seen.append)
    job_id = await ctx.enqueue("doomed")
    await ctx.drain()
    await ctx.drain()
    assert [r.id for r in seen] == [job_id]
    assert seen[0].state is evq.JobState.EXPIRED
    hooks = [e.data["status"] for e in await ctx.history(job_id) if e.kind == "hook"]
    assert hooks == ["started", "done"]
    assert (await ctx.get_job(job_id)).hook_state == "done"
    assert replay.check(ctx.path).ok


async def test_exhausted_hook_left_due_by_a_dead_process_is_run(ctx, clock):
    """A job expired by a rescue in a process without the hook; the next worker that
    knows the job runs it."""
    calls: list[str] = []
    ctx.define("doomed", lambda p: None, max_attempts=1, lease=5,
               on_max_attempts_exhausted=lambda job: calls.append(job.id))
    job_id = await ctx.enqueue("doomed")
    await ctx.ledger.writer.run(functools.partial(
        ops.claim, queues=["default"], names_json='["doomed"]', limit=1, worker="dies",
        lease_seconds=lambda n: 5))
    clock.advance(5)
    await ctx.rescue_expired()
    assert (await ctx.get_job(job_id)).hook_state == "due"
    await ctx.drain()
    assert calls == [job_id]
    await ctx.drain()
    assert calls == [job_id]


async def test_hook_started_by_a_dead_runner_is_taken_over_after_its_lease(ctx, clock):
    calls: list[str] = []
    ctx.define("doomed", lambda p: 1 / 0, max_attempts=1,
               on_max_attempts_exhausted=lambda job: calls.append(job.id))
    ids = [await ctx.enqueue("doomed") for _ in range(2)]
    await ctx.ledger.writer.run(functools.partial(  # a worker that dies after the expiries...
        ops.claim, queues=["default"], names_json='["doomed"]', limit=2, worker="dead",
        lease_seconds=lambda n: 5))
    clock.advance(5)
    await ctx.rescue_expired()
    row, _ = await ctx.ledger.writer.run(functools.partial(  # ...and just after taking a hook
        ops.take_hook, names_json='["doomed"]', worker="dead", lease=60))
    taken = row[0]
    [other] = [job_id for job_id in ids if job_id != taken]
    await ctx.drain()
    assert calls == [other]  # hooks are taken one at a time: the other one was free
    clock.advance(59)
    await ctx.drain()
    assert calls == [other]  # still leased to the dead runner
    clock.advance(1)
    await ctx.drain()
    assert calls == [other, taken]
    for job_id in ids:
        statuses = [e.data["status"] for e in await ctx.history(job_id) if e.kind == "hook"]
        assert statuses.count("done") == 1


async def test_failing_hook_is_recorded_as_failed(ctx):
    def broken(job):
        raise RuntimeError("pager is down")

    ctx.define("doomed", lambda p: 1 / 0, max_attempts=1, on_max_attempts_exhausted=broken)
    job_id = await ctx.enqueue("doomed")
    await ctx.drain()
    last = (await ctx.history(job_id))[-1]
    assert (last.kind, last.data["status"]) == ("hook", "failed")
    assert "pager is down" in last.data["error"]["message"]


async def test_a_slow_hook_keeps_its_lease_while_it_runs(ctx, clock):
    from evq.testing import settle

    started, gate = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    async def slow_hook(record):
        calls.append(record.id)
        started.set()
        await gate.wait()

    ctx.define("doomed", lambda p: 1 / 0, max_attempts=1, on_max_attempts_exhausted=slow_hook)
    job_id = await ctx.enqueue("doomed")
    worker = ctx.worker(hook_lease=3)
    serving = asyncio.create_task(worker.run())
    await started.wait()
    for _ in range(6):  # twice the hook lease, renewed every second
        clock.advance(1)
        await settle(ctx)
    await ctx.drain(name="another")  # finds nothing to take over
    assert calls == [job_id]
    gate.set()
    await worker.stop()
    await serving
    statuses = [e.data["status"] for e in await ctx.history(job_id) if e.kind == "hook"]
    assert statuses[0] == "started" and statuses[-1] == "done"
    assert statuses.count("renewed") >= 5
    assert replay.check(ctx.path).ok
