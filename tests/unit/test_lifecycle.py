"""The job lifecycle on a fake clock: outcomes, retries, ordering, leases and fencing."""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC

import pytest

import evq
from evq.ledger import records
from evq.ledger.sqlite import ops, replay
from evq.testing import kinds_of, settle
from evq.worker import Worker

RUN = ["enqueue", "dequeue", "run"]


async def test_return_value_is_success_and_stored(ctx):
    @ctx.job()
    async def add(payload):
        return payload["a"] + payload["b"]

    job_id = await add.enqueue({"a": 2, "b": 3})
    assert await ctx.drain() == 1
    record = await ctx.get_job(job_id)
    assert record.state is evq.JobState.SUCCEEDED
    assert record.result == 5
    assert await kinds_of(ctx, job_id) == [*RUN, "success"]


async def test_sync_handler_runs_off_the_event_loop(ctx):
    loop_thread = __import__("threading").get_ident()
    seen = []

    @ctx.job()
    def blocking(payload, job):
        seen.append(__import__("threading").get_ident())
        return job.attempt

    job_id = await blocking.enqueue(None)
    await ctx.drain()
    assert seen and seen[0] != loop_thread
    assert (await ctx.get_job(job_id)).result == 1


async def test_error_is_retried_with_backoff_until_success(ctx, clock):
    calls = []

    @ctx.job(max_attempts=3, backoff=evq.Fixed(10))
    async def flaky(payload, job):
        calls.append(job.attempt)
        if job.attempt < 3:
            raise ConnectionError("down")
        return "up"

    job_id = await flaky.enqueue()
    assert await ctx.drain() == 1
    record = await ctx.get_job(job_id)
    assert record.state is evq.JobState.PENDING and record.errors == 1
    assert record.run_at.timestamp() == pytest.approx(clock.now() + 10)
    assert await ctx.drain() == 0  # not due yet: nothing runs early
    clock.advance(10)
    await ctx.drain()
    clock.advance(10)
    await ctx.drain()
    assert calls == [1, 2, 3]
    assert (await ctx.get_job(job_id)).result == "up"
    assert await kinds_of(ctx, job_id) == [
        *RUN, "error", "dequeue", "run", "error", "dequeue", "run", "success"]
    error = (await ctx.history(job_id))[3]
    assert error.data["error"]["type"] == "ConnectionError"
    assert "down" in error.data["error"]["traceback"]
    assert error.data["retry_in"] == 10


async def test_running_out_of_attempts_expires_the_job(ctx, clock):
    @ctx.job(max_attempts=2, backoff=evq.Fixed(1))
    async def doomed(payload):
        raise RuntimeError("never")

    job_id = await doomed.enqueue()
    await ctx.drain()
    clock.advance(1)
    await ctx.drain()
    record = await ctx.get_job(job_id)
    assert record.state is evq.JobState.EXPIRED
    assert record.errors == 2
    assert record.error["message"] == "never"
    assert await kinds_of(ctx, job_id) == [*RUN, "error", "dequeue", "run", "error", "expire"]


async def test_exponential_backoff_grows(ctx, clock):
    @ctx.job(max_attempts=4, backoff=evq.Exponential(base=2, factor=3, jitter=False))
    async def grow(payload):
        raise RuntimeError("x")

    job_id = await grow.enqueue()
    delays = []
    for _ in range(3):
        await ctx.drain()
        delays.append((await ctx.history(job_id))[-1].data["retry_in"])
        clock.advance(delays[-1])
    assert delays == [2, 6, 18]


def test_exponential_jitter_stays_within_half_and_full_delay():
    import random

    policy = evq.Exponential(base=4, factor=2, maximum=100, rng=random.Random(7))
    for errors in range(1, 10):
        full = min(100, 4 * 2 ** (errors - 1))
        assert full / 2 <= policy(errors) <= full


async def test_custom_backoff_callable(ctx, clock):
    @ctx.job(max_attempts=2, backoff=lambda errors: 42.5)
    async def custom(payload):
        raise RuntimeError("x")

    job_id = await custom.enqueue()
    await ctx.drain()
    assert (await ctx.history(job_id))[-1].data["retry_in"] == 42.5


async def test_unrecoverable_error_fails_at_once(ctx):
    @ctx.job(max_attempts=5)
    async def bad(payload):
        raise evq.UnrecoverableError("card declined")

    job_id = await bad.enqueue()
    await ctx.drain()
    record = await ctx.get_job(job_id)
    assert record.state is evq.JobState.FAILED and record.attempt == 1
    assert await kinds_of(ctx, job_id) == [*RUN, "error", "fail"]


async def test_explicit_outcomes(ctx, clock):
    @ctx.job()
    async def explicit(payload, job):
        action = payload["do"]
        if action == "completed":
            job.completed({"done": True})
        elif action == "failed":
            job.failed("gave up")
        elif action == "requeue":
            if job.attempt == 1:
                job.requeue(30)
            else:
                job.completed("second time")
        elif action == "delete":
            job.delete()

    ids = {do: await explicit.enqueue({"do": do})
           for do in ("completed", "failed", "requeue", "delete")}
    await ctx.drain()
    assert (await ctx.get_job(ids["completed"])).result == {"done": True}
    failed = await ctx.get_job(ids["failed"])
    assert failed.state is evq.JobState.FAILED and failed.error["message"] == "gave up"
    assert await ctx.get_job(ids["delete"]) is None
    assert await kinds_of(ctx, ids["delete"]) == [*RUN, "delete"]
    requeued = await ctx.get_job(ids["requeue"])
    assert requeued.state is evq.JobState.PENDING and requeued.errors == 0
    clock.advance(30)
    await ctx.drain()
    assert (await ctx.get_job(ids["requeue"])).result == "second time"


async def test_two_explicit_outcomes_is_an_error(ctx):
    @ctx.job(max_attempts=1)
    async def twice(payload, job):
        job.completed()
        job.failed()

    job_id = await twice.enqueue()
    await ctx.drain()
    record = await ctx.get_job(job_id)
    assert record.state is evq.JobState.EXPIRED
    assert record.error["type"] == "OutcomeAlreadySet"


async def test_non_json_result_fails_the_job_with_a_clear_error(ctx):
    @ctx.job()
    async def odd(payload):
        return {1, 2, 3}

    job_id = await odd.enqueue()
    await ctx.drain()
    record = await ctx.get_job(job_id)
    assert record.state is evq.JobState.FAILED
    assert "result" in record.error["message"]


async def test_order_is_priority_then_run_at_then_fifo(ctx, clock):
    order = []

    @ctx.job()
    async def note(payload):
        order.append(payload)

    await note.enqueue("late-low", run_at=clock.now() - 1)
    await note.enqueue("first-low")
    await note.enqueue("second-low")
    await note.enqueue("high", priority=5)
    await note.enqueue("earliest-low", run_at=clock.now() - 10)
    await ctx.drain(concurrency=1)
    assert order == ["high", "earliest-low", "late-low", "first-low", "second-low"]


async def test_delay_and_iso_run_at(ctx, clock):
    ran = []

    @ctx.job()
    async def later(payload):
        ran.append(payload)

    from datetime import datetime

    at = datetime.fromtimestamp(clock.now() + 60, UTC).isoformat()
    await later.enqueue("iso", run_at=at)
    await later.enqueue("delay", delay=30)
    assert await ctx.drain() == 0
    clock.advance(30)
    await ctx.drain()
    assert ran == ["delay"]
    clock.advance(30)
    await ctx.drain()
    assert ran == ["delay", "iso"]


async def test_worker_serves_only_its_queues(ctx):
    ran = []
    ctx.define("a", lambda p: ran.append("a"), queue="alpha")
    ctx.define("b", lambda p: ran.append("b"), queue="beta")
    await ctx.enqueue("a")
    await ctx.enqueue("b")
    await ctx.drain(queues=["beta"])
    assert ran == ["b"]
    await ctx.drain(queues="alpha")
    assert ran == ["b", "a"]


async def test_concurrency_limit_is_respected(ctx):
    running = 0
    peak = 0
    gate = asyncio.Event()

    @ctx.job()
    async def hold(payload):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1

    for i in range(10):
        await hold.enqueue(i)
    worker = ctx.worker(concurrency=3)
    task = asyncio.create_task(worker.run(until_idle=True))
    while running < 3:
        await asyncio.sleep(0)
    for _ in range(50):
        await asyncio.sleep(0)
    assert running == 3
    gate.set()
    assert await task == 10
    assert peak == 3


async def test_bulk_enqueue_is_one_transaction(ctx):
    ctx.define("job", lambda p: p)
    positions_before = len(await ctx.events())
    ids = await ctx.enqueue_many([("job", i) for i in range(5)] + [
        evq.EnqueueRequest("job", "later", delay=5)])
    assert len(ids) == 6 and len(set(ids)) == 6
    events = await ctx.events(after=positions_before)
    assert [e.kind for e in events] == ["enqueue"] * 6


async def test_lease_is_extended_while_the_handler_runs(ctx, clock):
    gate = asyncio.Event()
    started = asyncio.Event()

    @ctx.job(lease=30)
    async def long(payload):
        started.set()
        await gate.wait()
        return "done"

    job_id = await long.enqueue()
    worker = ctx.worker()
    task = asyncio.create_task(worker.run(until_idle=True))
    await started.wait()
    for _ in range(6):  # 60 s in 10 s steps: twice the lease
        clock.advance(10)
        await settle(ctx)
    record = await ctx.get_job(job_id)
    assert record.state is evq.JobState.RUNNING
    assert record.lease_until.timestamp() > clock.now()
    assert await ctx.rescue_expired() == 0
    gate.set()
    await task
    assert (await ctx.get_job(job_id)).state is evq.JobState.SUCCEEDED
    assert "heartbeat" in await kinds_of(ctx, job_id)


async def test_lost_lease_is_rescued_and_the_old_holder_is_fenced(ctx, clock):
    ctx.define("job", lambda p: "ok", lease=20, max_attempts=3, backoff=evq.Fixed(0))
    job_id = await ctx.enqueue("job")
    claim = functools.partial(ops.claim, queues=["default"], names_json='["job"]', limit=1,
                              worker="stale", lease_seconds=lambda n: 20)
    [held] = await ctx.ledger.writer.run(claim)
    clock.advance(21)
    assert await ctx.rescue_expired() == 1
    record = await ctx.get_job(job_id)
    assert record.state is evq.JobState.PENDING and record.errors == 1
    attempt = records.Attempt(job_id, "default", "job", held.attempt, "stale")
    with pytest.raises(evq.LeaseLost):
        await ctx.ledger.writer.run(functools.partial(
            ops.report, held=attempt, planned=[evq.outcomes.Planned("success", {"result": 1})]))
    await ctx.drain()
    record = await ctx.get_job(job_id)
    assert record.state is evq.JobState.SUCCEEDED and record.attempt == 2
    assert await kinds_of(ctx, job_id) == [*RUN, "rescue", "dequeue", "run", "success"]
    assert replay.check(ctx.path).ok


async def test_rescue_of_last_attempt_expires(ctx, clock):
    ctx.define("job", lambda p: None, lease=5, max_attempts=1)
    job_id = await ctx.enqueue("job")
    await ctx.ledger.writer.run(functools.partial(
        ops.claim, queues=["default"], names_json='["job"]', limit=1, worker="gone",
        lease_seconds=lambda n: 5))
    clock.advance(5)
    await ctx.rescue_expired()
    assert (await ctx.get_job(job_id)).state is evq.JobState.EXPIRED
    assert await kinds_of(ctx, job_id) == [*RUN, "rescue", "expire"]


async def test_cancel_pending_and_refuse_cancel_of_finished(ctx):
    ctx.define("job", lambda p: None)
    pending = await ctx.enqueue("job", delay=100)
    await ctx.cancel(pending, reason="not needed")
    assert (await ctx.get_job(pending)).state is evq.JobState.CANCELLED
    done = await ctx.enqueue("job")
    await ctx.drain()
    with pytest.raises(evq.JobStateConflict, match="already ended"):
        await ctx.cancel(done)
    with pytest.raises(evq.UnknownJob):
        await ctx.cancel("0" * 32)
    assert await kinds_of(ctx, done) == [*RUN, "success"]


async def test_delete_removes_from_state_but_keeps_events(ctx):
    ctx.define("job", lambda p: None)
    job_id = await ctx.enqueue("job")
    await ctx.delete(job_id, reason="cleanup")
    assert await ctx.get_job(job_id) is None
    assert await kinds_of(ctx, job_id) == ["enqueue", "delete"]
    with pytest.raises(evq.UnknownJob):
        await ctx.delete(job_id)


async def test_graceful_stop_lets_running_jobs_finish(ctx):
    started = asyncio.Event()
    gate = asyncio.Event()

    @ctx.job()
    async def slow(payload):
        started.set()
        await gate.wait()
        return "finished"

    job_id = await slow.enqueue()
    queued = await slow.enqueue()
    worker = ctx.worker(concurrency=1, grace=30)
    task = asyncio.create_task(worker.run())
    await started.wait()
    worker.stop()
    gate.set()
    await task
    assert (await ctx.get_job(job_id)).result == "finished"
    assert (await ctx.get_job(queued)).state is evq.JobState.PENDING


async def test_stop_past_grace_hands_the_job_back_at_once(ctx):
    started = asyncio.Event()

    @ctx.job()
    async def stuck(payload):
        started.set()
        await asyncio.Event().wait()

    job_id = await stuck.enqueue()
    worker = ctx.worker(grace=0)
    task = asyncio.create_task(worker.run())
    await started.wait()
    worker.stop()
    await task
    record = await ctx.get_job(job_id)
    assert record.state is evq.JobState.PENDING and record.errors == 0
    assert (await ctx.history(job_id))[-1].data["reason"] == "worker_stopped"


async def test_handler_timeout_is_an_error(ctx):
    @ctx.job(timeout=0.01, max_attempts=1)
    async def hangs(payload):
        await asyncio.Event().wait()

    job_id = await hangs.enqueue()
    await ctx.drain()
    record = await ctx.get_job(job_id)
    assert record.state is evq.JobState.EXPIRED
    assert record.error["type"] == "TimeoutError"


async def test_signal_stops_the_worker_gracefully(ctx):
    import os
    import signal

    started = asyncio.Event()
    gate = asyncio.Event()

    @ctx.job()
    async def slow(payload):
        started.set()
        await gate.wait()
        return 1

    job_id = await slow.enqueue()
    worker = ctx.worker()
    task = asyncio.create_task(worker.run(handle_signals=True))
    await started.wait()
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0)
    gate.set()
    await task
    assert (await ctx.get_job(job_id)).state is evq.JobState.SUCCEEDED


async def test_a_cancelled_caller_never_loses_a_handed_over_write(ctx):
    """Once an outcome is handed to the writer, cancelling the task that waits for it
    does not undo it: the write commits anyway."""
    import threading

    ctx.define("job", lambda p: None)
    gate = threading.Event()
    # Keep the writer thread busy, so the next write is still queued when it is cancelled.
    busy = asyncio.create_task(ctx.ledger.writer.run(lambda tx: gate.wait(10), weight=100))
    await asyncio.sleep(0)
    new = ctx.prepare("job", {"n": 1})
    waiting = asyncio.create_task(ctx.ledger.writer.run(functools.partial(ops.enqueue, jobs=[new])))
    await asyncio.sleep(0)  # handed over, not committed
    assert await ctx.get_job(new.id) is None
    waiting.cancel()
    await asyncio.sleep(0)
    gate.set()
    await busy
    await ctx.ledger.writer.run(lambda tx: None)  # everything handed over before is committed
    assert waiting.cancelled()
    assert await kinds_of(ctx, new.id) == ["enqueue"]


async def test_retry_runs_an_ended_job_again_as_a_new_linked_job(ctx, clock):
    calls: list[int] = []

    @ctx.job(max_attempts=1)
    async def flaky(payload):
        calls.append(payload)
        if len(calls) == 1:
            raise RuntimeError("down")
        return "up"

    old = await flaky.enqueue(7)
    await ctx.drain()
    new = await ctx.retry(old, reason="fixed")
    await ctx.drain()
    assert (await ctx.get_job(old)).state is evq.JobState.EXPIRED  # it ended once
    assert (await ctx.get_job(new)).result == "up"
    assert (await ctx.history(new))[0].data["retry_of"] == old
    assert (await ctx.history(old))[-1].data["new_job_id"] == new
    with pytest.raises(evq.JobStateConflict, match="only failed, expired or cancelled"):
        await ctx.retry(new)
    assert replay.check(ctx.path).ok


async def test_an_attempt_that_lost_its_lease_here_is_stopped_and_awaited(ctx, clock,
                                                                           monkeypatch):
    """Its heartbeats stalled (say, a starved event loop), so this very worker rescues
    the job and runs attempt 2 while attempt 1's handler is still going."""
    async def stalled(self: Worker) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(Worker, "_heartbeats", stalled)
    first_started, first_stopped = asyncio.Event(), asyncio.Event()

    @ctx.job(lease=2, max_attempts=3, backoff=evq.Fixed(0))
    async def job(payload, job: evq.Job):
        if job.attempt == 1:
            first_started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                first_stopped.set()
                raise
        return f"attempt {job.attempt}"

    job_id = await job.enqueue()
    worker = ctx.worker(concurrency=2)
    task = asyncio.create_task(worker.run(until_idle=True))
    await first_started.wait()
    clock.advance(3)
    assert await task == 1
    assert first_stopped.is_set()
    record = await ctx.get_job(job_id)
    assert record.state is evq.JobState.SUCCEEDED and record.result == "attempt 2"
    assert await kinds_of(ctx, job_id) == [*RUN, "rescue", "dequeue", "run", "success"]



def test_job_ids_differ_across_a_fork_and_ignore_random_seed():
    """Two processes making ids in the same millisecond must not agree: the generator
    is reseeded in a forked child, and an application's random.seed() does not touch
    it."""
    import os
    import random

    from evq.enqueueing import new_job_id

    random.seed(0)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send one id and leave at once
        os.write(write, new_job_id().encode())
        os._exit(0)
    os.close(write)
    mine = new_job_id()
    theirs = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert len(mine) == len(theirs) == 32
    assert mine[12:] != theirs[12:]
    random.seed(0)
    first = new_job_id()
    random.seed(0)
    assert new_job_id()[12:] != first[12:]


async def test_outcomes_can_be_awaited_as_joystick_handlers_write_them(ctx, clock):
    @ctx.job()
    async def completes(payload, job):
        await job.completed({"sent": payload})

    @ctx.job()
    async def fails(payload, job):
        await job.failed("mailbox does not exist")

    @ctx.job()
    async def requeues(payload, job):
        if job.attempt == 1:
            await job.requeue(30)
        else:
            return "second time"

    @ctx.job()
    async def deletes(payload, job):
        await job.delete()

    @ctx.job()
    def plain_in_a_thread(payload, job):
        job.completed("still a plain call")

    ids = {name: await ctx.enqueue(name, 1) for name in (
        "completes", "fails", "requeues", "deletes", "plain_in_a_thread")}
    await ctx.drain()
    clock.advance(30)
    await ctx.drain()
    states = {name: (await ctx.get_job(job_id)) for name, job_id in ids.items()}
    assert states["completes"].result == {"sent": 1}
    assert states["fails"].state is evq.JobState.FAILED
    assert states["fails"].error["message"] == "mailbox does not exist"
    assert (states["requeues"].result, states["requeues"].errors) == ("second time", 0)
    assert states["deletes"] is None
    assert states["plain_in_a_thread"].result == "still a plain call"


async def test_awaiting_stop_waits_until_the_worker_has_stopped(ctx):
    started, gate = asyncio.Event(), asyncio.Event()

    @ctx.job()
    async def slow(payload):
        started.set()
        await gate.wait()

    await slow.enqueue()
    worker = ctx.worker(grace=30)
    task = asyncio.create_task(worker.run())
    await started.wait()
    stopping = asyncio.ensure_future(worker.stop())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not stopping.done() and not task.done()  # the running job has its grace
    gate.set()
    await stopping
    assert task.done() and task.result() == 1


async def test_a_job_may_stop_its_own_worker_plainly_or_awaiting(ctx):
    @ctx.job()
    async def stop_async(payload, job):
        await worker.stop()  # returns at once: the worker waits for this very job
        return "stopped from async"

    @ctx.job()
    def stop_sync(payload, job):
        worker.stop()  # from the handler's thread
        return "stopped from a thread"

    for name in ("stop_async", "stop_sync"):
        job_id = await ctx.enqueue(name)
        worker = ctx.worker()
        assert await asyncio.wait_for(worker.run(), 10) == 1
        assert (await ctx.get_job(job_id)).result.startswith("stopped from")


async def test_awaiting_an_orchestrator_stop_waits_until_it_handed_over(ctx):
    orchestrator = ctx.orchestrator(interval=3600)
    task = asyncio.create_task(orchestrator.run())
    async with asyncio.timeout(10):
        while not await ctx.ledger._read("SELECT holder FROM evq_leaders"):
            await asyncio.sleep(0)
    await orchestrator.stop()
    assert task.done()
    assert await ctx.ledger._read("SELECT holder FROM evq_leaders") == []


def test_worker_and_orchestrator_options_are_named_on_the_context():
    """`ctx.worker(...)` and `ctx.orchestrator(...)` take the same keyword options, with
    the same defaults, as the classes they build (visible in help() and to type
    checkers), and an unknown one is refused by name."""
    import inspect

    from evq.orchestrator import Orchestrator

    def options(function: object, skip: int) -> list[tuple[str, object]]:
        parameters = list(inspect.signature(function).parameters.values())[skip:]
        assert all(p.kind is p.KEYWORD_ONLY for p in parameters)
        return [(p.name, p.default) for p in parameters]

    assert options(evq.Context.worker, 1) == options(Worker.__init__, 2)
    assert options(evq.Context.orchestrator, 1) == options(Orchestrator.__init__, 2)
    ctx = evq.Context("unused.db")
    assert ctx.worker(concurrency=3, grace=1).concurrency == 3
    assert ctx.orchestrator(leader_lease=4).leader_lease == 4
    with pytest.raises(TypeError, match="concurency"):
        ctx.worker(concurency=3)  # type: ignore[call-arg]


@pytest.mark.parametrize("is_async", [True, False], ids=["async", "sync"])
async def test_an_errors_traceback_starts_at_the_handler_not_in_evq(ctx, is_async):
    def fail(payload):
        raise ValueError("no such warehouse")

    async def fail_async(payload):
        fail(payload)

    ctx.define("job", fail_async if is_async else fail, max_attempts=1)
    job_id = await ctx.enqueue("job")
    await ctx.drain()
    traceback = (await ctx.get_job(job_id)).error["traceback"]
    frames = [line for line in traceback.splitlines() if line.lstrip().startswith("File ")]
    assert frames and all(__file__ in frame for frame in frames), traceback
