"""A job's life through the interface: enqueue, claim, report; what each step commits
(events in order, sealed per commit, positions that only grow), what the job's record
says after it, idempotency keys, and bulk enqueues that commit all or nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from queue import SimpleQueue

import pytest
from ledger_kit import (
    Commits,
    EngineKit,
    all_events,
    claim,
    failure,
    job_kinds,
    kinds,
    new_job,
    request,
    sound,
    state,
    success,
)

import evq
from evq.ledger import Ledger, records
from evq.outcomes import Planned


def moment(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


async def test_a_job_runs_from_enqueue_to_success(ledger: Ledger, clock: evq.FakeClock,
                                                  commits: Commits) -> None:
    job = new_job(clock, payload={"to": "ada"}, priority=2)
    assert await ledger.enqueue([job]) == [job.id]
    clock.advance(1)
    result = await ledger.claim(request(lease=30.0))
    [claimed] = result.claimed
    assert (claimed.id, claimed.attempt, claimed.errors, claimed.payload, claimed.priority
            ) == (job.id, 1, 0, {"to": "ada"}, 2)
    assert claimed.lease_until == clock.now() + 30.0 and claimed.run_at == job.run_at
    assert result.at == clock.now()
    running = await ledger.get_job(job.id)
    assert running is not None and running.state is evq.JobState.RUNNING
    assert (running.worker, running.attempt, running.lease_until) == (
        "w1", 1, moment(clock.now() + 30.0))
    clock.advance(2)
    await ledger.report(records.Attempt(job.id, "q", "n", 1, "w1"), success({"sent": True}))

    assert await job_kinds(ledger, job.id) == ["enqueue", "dequeue", "run", "success"]
    events = await all_events(ledger)
    assert kinds(events) == ["enqueue", "seal", "dequeue", "run", "seal", "success", "seal"]
    positions = [e.position for e in events]
    assert positions == sorted(set(positions)) and await ledger.head() == positions[-1]
    # Each commit is handed on once, whole, in order, and ends with its seal.
    assert [[e.position for e in batch] for batch in commits] == [
        positions[0:2], positions[2:5], positions[5:7]]
    assert all(batch[-1].kind == "seal" for batch in commits)
    done = await ledger.get_job(job.id)
    assert done is not None
    assert (done.state, done.attempt, done.errors, done.result, done.error, done.worker,
            done.lease_until) == (evq.JobState.SUCCEEDED, 1, 0, {"sent": True}, None, "w1",
                                  None)
    assert (done.enqueued_at, done.started_at, done.finished_at) == (
        moment(clock.now() - 3), moment(clock.now() - 2), moment(clock.now()))
    assert done.enqueue_position == events[0].position
    assert done.updated_position == events[5].position
    assert await ledger.counts() == {"succeeded": 1}


async def test_an_event_carries_who_did_what(ledger: Ledger, clock: evq.FakeClock) -> None:
    job = new_job(clock, "mail", "send", payload=[1, 2])
    await ledger.enqueue([job])
    [attempt] = await claim(ledger, "w9", queues=["mail"], names=["send"])
    await ledger.report(attempt, success(7))
    enqueue, dequeue, run, done = await ledger.history(job.id)
    assert (enqueue.job_id, enqueue.queue, enqueue.job, enqueue.attempt, enqueue.worker) == (
        job.id, "mail", "send", None, None)
    assert enqueue.data["payload"] == [1, 2]
    for event in (dequeue, run, done):
        assert (event.job_id, event.queue, event.job, event.attempt, event.worker) == (
            job.id, "mail", "send", 1, "w9")
    assert done.data["result"] == 7
    assert enqueue.at == moment(clock.now())


async def test_an_error_retries_then_expires_at_max_attempts(ledger: Ledger,
                                                             clock: evq.FakeClock) -> None:
    job = new_job(clock, attempts=2)
    await ledger.enqueue([job])
    [first] = await claim(ledger)
    await ledger.report(first, failure(0, 2, backoff=10.0))
    record = await ledger.get_job(job.id)
    assert record is not None
    assert (record.state, record.errors, record.attempt, record.run_at) == (
        evq.JobState.PENDING, 1, 1, moment(clock.now() + 10.0))
    assert record.error is not None and record.error["message"] == "boom"
    assert await claim(ledger) == []  # not due before its backoff
    clock.advance(10)
    [second] = await claim(ledger)
    assert second.attempt == 2
    await ledger.report(second, failure(1, 2))
    assert await state(ledger, job.id) == "expired"
    assert await job_kinds(ledger, job.id) == [
        "enqueue", "dequeue", "run", "error", "dequeue", "run", "error", "expire"]
    assert await claim(ledger) == []


async def test_an_unrecoverable_error_fails_at_once(ledger: Ledger, clock: evq.FakeClock
                                                    ) -> None:
    job = new_job(clock, attempts=5)
    await ledger.enqueue([job])
    [attempt] = await claim(ledger)
    await ledger.report(attempt, failure(0, 5, retryable=False))
    record = await ledger.get_job(job.id)
    assert record is not None and (record.state, record.errors) == (evq.JobState.FAILED, 1)
    assert (await job_kinds(ledger, job.id))[-2:] == ["error", "fail"]


async def test_requeue_and_defer_put_the_job_back(ledger: Ledger, clock: evq.FakeClock
                                                  ) -> None:
    job = new_job(clock)
    await ledger.enqueue([job])
    [first] = await claim(ledger)
    await ledger.report(first, [Planned("requeue", {"reason": "later"}, due_in=5.0)])
    record = await ledger.get_job(job.id)
    assert record is not None
    assert (record.state, record.attempt, record.errors, record.run_at) == (
        evq.JobState.PENDING, 1, 0, moment(clock.now() + 5.0))
    clock.advance(5)
    [second] = await claim(ledger, run_later=["n"])
    assert second.attempt == 2
    # okay_to_run said not now: the attempt is given back.
    await ledger.report(second, [Planned("defer", {"reason": "busy", "attempt_before": 1},
                                         due_in=3.0)])
    record = await ledger.get_job(job.id)
    assert record is not None and (record.state, record.attempt) == (evq.JobState.PENDING, 1)
    clock.advance(3)
    [third] = await claim(ledger)
    assert third.attempt == 2


async def test_a_job_is_not_claimed_before_its_time(ledger: Ledger, clock: evq.FakeClock
                                                    ) -> None:
    later = new_job(clock, delay=60.0)
    await ledger.enqueue([later])
    result = await ledger.claim(request())
    assert result.claimed == [] and result.next_at == later.run_at
    clock.advance(60)
    assert [a.job_id for a in await claim(ledger)] == [later.id]


async def test_a_key_names_its_live_job_and_adds_nothing(ledger: Ledger,
                                                         clock: evq.FakeClock) -> None:
    first = new_job(clock, key="invoice-7")
    assert await ledger.enqueue([first]) == [first.id]
    head = await ledger.head()
    again, other = new_job(clock, key="invoice-7"), new_job(clock)
    assert await ledger.enqueue([again, other]) == [first.id, other.id]
    assert await ledger.get_job(again.id) is None
    assert [e.job_id for e in await ledger.events(head, 100, False)] == [other.id]
    # Still live while it runs; once it has ended, the key is free.
    [attempt] = await claim(ledger, limit=1)
    assert attempt.job_id == first.id
    assert await ledger.enqueue([new_job(clock, key="invoice-7")]) == [first.id]
    await ledger.report(attempt, success())
    fresh = new_job(clock, key="invoice-7")
    assert await ledger.enqueue([fresh]) == [fresh.id]


async def test_two_jobs_with_one_key_in_one_batch_are_one_job(ledger: Ledger,
                                                              clock: evq.FakeClock) -> None:
    a, b = new_job(clock, key="k"), new_job(clock, key="k")
    assert await ledger.enqueue([a, b]) == [a.id, a.id]
    assert [j.id for j in await ledger.jobs()] == [a.id]


async def test_a_bulk_enqueue_commits_all_or_nothing(ledger: Ledger, clock: evq.FakeClock,
                                                     commits: Commits) -> None:
    taken = new_job(clock)
    await ledger.enqueue([taken])
    head, seen = await ledger.head(), len(commits)
    batch = [new_job(clock), new_job(clock), new_job(clock, id=taken.id)]
    with pytest.raises(evq.EvqError):
        await ledger.enqueue(batch)
    assert [j.id for j in await ledger.jobs()] == [taken.id]
    assert await ledger.head() == head and len(commits) == seen
    ids = await ledger.enqueue(batch[:2])  # the same jobs, without the clash, go in
    assert ids == [batch[0].id, batch[1].id]
    assert len(commits) == seen + 1 and kinds(commits[-1]) == ["enqueue", "enqueue", "seal"]


async def test_a_refused_write_handed_over_with_others_fails_alone(
        ledger: Ledger, clock: evq.FakeClock, commits: Commits) -> None:
    # Handed over together, they commit together (one group commit); the clash, found
    # only when the engine writes, must take nothing of the others with it.
    taken = new_job(clock)
    await ledger.enqueue([taken])
    seen = len(commits)
    others = [new_job(clock) for _ in range(4)]
    clash = new_job(clock, id=taken.id)
    handed = [asyncio.ensure_future(ledger.enqueue([job])) for job in others[:2]]
    handed.append(asyncio.ensure_future(ledger.enqueue([clash])))
    handed += [asyncio.ensure_future(ledger.enqueue([job])) for job in others[2:]]
    outcomes = await asyncio.gather(*handed, return_exceptions=True)
    refused = outcomes.pop(2)
    assert isinstance(refused, evq.JobStateConflict) and taken.id in str(refused)
    assert outcomes == [[job.id] for job in others]
    assert sorted(j.id for j in await ledger.jobs()) == sorted([taken.id] + [
        job.id for job in others])
    landed = [e for commit in commits[seen:] for e in commit if e.kind == "enqueue"]
    assert [e.job_id for e in landed] == [job.id for job in others]
    sound(ledger.verify())


async def test_a_streamed_bulk_enqueue_commits_all_or_nothing(ledger: Ledger,
                                                              clock: evq.FakeClock) -> None:
    feed: records.JobFeed = SimpleQueue()
    chunks = [[new_job(clock), new_job(clock)], [new_job(clock)]]
    for chunk in chunks:
        feed.put(chunk)
    feed.put(None)
    ids = await ledger.enqueue_stream(feed)
    assert ids == [job.id for chunk in chunks for job in chunk]
    head = await ledger.head()
    aborted: records.JobFeed = SimpleQueue()
    aborted.put([new_job(clock)])
    aborted.put(ValueError("the third chunk was bad"))
    with pytest.raises(ValueError, match="third chunk"):
        await ledger.enqueue_stream(aborted)
    assert await ledger.head() == head and len(await ledger.jobs()) == 3


async def test_a_rejected_job_leaves_an_event_and_no_job(ledger: Ledger,
                                                         clock: evq.FakeClock) -> None:
    job = new_job(clock)
    await ledger.reject([job], {job.id: "over quota"})
    assert await ledger.get_job(job.id) is None
    [event] = await ledger.history(job.id)
    assert event.kind == "reject" and event.data["reason"] == "over quota"


async def test_a_reopened_ledger_has_every_acknowledged_job(engine: EngineKit, place: str,
                                                            ledger: Ledger,
                                                            clock: evq.FakeClock) -> None:
    jobs = [new_job(clock) for _ in range(3)]
    await ledger.enqueue(jobs)
    [attempt] = await claim(ledger, limit=1)
    head = await ledger.head()
    await ledger.close()
    assert not ledger.is_open
    again = engine.handle(place)
    await again.open(clock, lambda batch: None)
    try:
        assert sorted(j.id for j in await again.jobs()) == sorted(j.id for j in jobs)
        assert await state(again, attempt.job_id) == "running"
        assert await again.head() == head
        await again.report(attempt, success())  # the holder's attempt survives the restart
        assert await again.head() > head
    finally:
        await again.close()


async def test_flush_returns_once_everything_handed_over_is_committed(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    jobs = [new_job(clock) for _ in range(5)]
    handed = [asyncio.ensure_future(ledger.enqueue([job])) for job in jobs]
    flushed = asyncio.ensure_future(ledger.flush())  # handed over after the enqueues
    await flushed
    assert [await ledger.get_job(job.id) is not None for job in jobs] == [True] * 5
    assert await asyncio.gather(*handed) == [[job.id] for job in jobs]


async def test_a_closed_ledger_refuses_runtime_calls(ledger: Ledger, clock: evq.FakeClock
                                                     ) -> None:
    await ledger.close()
    with pytest.raises(evq.ContextClosed):
        await ledger.enqueue([new_job(clock)])
    with pytest.raises(evq.ContextClosed):
        await ledger.get_job("nobody")


async def test_unknown_jobs_are_refused_by_name(ledger: Ledger) -> None:
    assert await ledger.get_job("nobody") is None
    assert await ledger.history("nobody") == []
    for refused in (ledger.cancel("nobody", None), ledger.delete("nobody", None),
                    ledger.retry("nobody", "new", None)):
        with pytest.raises(evq.UnknownJob, match="nobody"):
            await refused
    assert await ledger.head() == 0
