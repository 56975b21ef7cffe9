"""Cancel, delete and retry: which states each accepts, what it leaves behind, and that a
refusal names the job and changes nothing."""

from __future__ import annotations

import time

import pytest
from ledger_kit import claim, failure, job_kinds, new_job, state, success

import evq
from evq.ledger import Ledger, records


async def ended_job(ledger: Ledger, clock: evq.FakeClock, how: str) -> str:
    """A job that ended `how` (succeeded, failed, expired, cancelled)."""
    job = new_job(clock, attempts=1)
    await ledger.enqueue([job])
    if how == "cancelled":
        await ledger.cancel(job.id, "test")
        return job.id
    [attempt] = await claim(ledger, limit=1)
    await ledger.report(attempt, success() if how == "succeeded" else failure(
        0, 1, retryable=how == "expired"))
    assert await state(ledger, job.id) == how
    return job.id


async def test_cancel_ends_a_job_that_has_not_ended(ledger: Ledger, clock: evq.FakeClock
                                                    ) -> None:
    waiting, later = new_job(clock), new_job(clock, delay=60.0)
    await ledger.enqueue([waiting, later])
    assert await ledger.cancel(waiting.id, "typo") == [records.Stopped(waiting.id, False)]
    assert await ledger.cancel(later.id, None) == [records.Stopped(later.id, False)]
    cancel = (await ledger.history(waiting.id))[-1]
    assert (cancel.kind, cancel.data["reason"]) == ("cancel", "typo")
    assert await state(ledger, waiting.id) == "cancelled"
    clock.advance(60)
    assert await claim(ledger) == []


@pytest.mark.parametrize("how", ["succeeded", "failed", "expired", "cancelled"])
async def test_cancel_of_an_ended_job_is_refused_and_changes_nothing(
        ledger: Ledger, clock: evq.FakeClock, how: str) -> None:
    job_id = await ended_job(ledger, clock, how)
    head, jobs = await ledger.head(), await ledger.jobs()
    with pytest.raises(evq.JobStateConflict, match=job_id):
        await ledger.cancel(job_id, None)
    assert (await ledger.head(), await ledger.jobs()) == (head, jobs)


@pytest.mark.parametrize("how", ["pending", "succeeded", "failed", "cancelled"])
async def test_delete_removes_a_job_that_is_not_running_and_keeps_its_events(
        ledger: Ledger, clock: evq.FakeClock, how: str) -> None:
    if how == "pending":
        job = new_job(clock)
        await ledger.enqueue([job])
        job_id = job.id
    else:
        job_id = await ended_job(ledger, clock, how)
    before = await job_kinds(ledger, job_id)
    assert await ledger.delete(job_id, "cleanup") == []
    assert await ledger.get_job(job_id) is None
    assert job_id not in {j.id for j in await ledger.jobs()}
    assert await job_kinds(ledger, job_id) == [*before, "delete"]
    with pytest.raises(evq.UnknownJob):
        await ledger.delete(job_id, None)


async def test_delete_of_a_running_job_is_refused(ledger: Ledger, clock: evq.FakeClock
                                                  ) -> None:
    job = new_job(clock)
    await ledger.enqueue([job])
    [attempt] = await claim(ledger)
    head = await ledger.head()
    with pytest.raises(evq.JobStateConflict, match=job.id):
        await ledger.delete(job.id, None)
    assert await ledger.head() == head
    await ledger.report(attempt, success())


@pytest.mark.parametrize("how", ["failed", "expired", "cancelled"])
async def test_retry_enqueues_a_job_that_ended_badly_again(
        ledger: Ledger, clock: evq.FakeClock, how: str) -> None:
    job = new_job(clock, payload={"n": 1}, priority=3, attempts=1, group="g")
    await ledger.enqueue([job])
    if how == "cancelled":
        await ledger.cancel(job.id, None)
    else:
        [attempt] = await claim(ledger)
        await ledger.report(attempt, failure(0, 1, retryable=how == "expired"))
    clock.advance(30)
    assert await ledger.retry(job.id, "again-1", "fixed the bug") == "again-1"
    assert await state(ledger, job.id) == how  # a job ends once: the old one stays ended
    retry = (await ledger.history(job.id))[-1]
    assert (retry.kind, retry.data["new_job_id"], retry.data["reason"]) == (
        "retry", "again-1", "fixed the bug")
    new = await ledger.get_job("again-1")
    assert new is not None
    assert (new.state, new.queue, new.name, new.priority, new.max_attempts, new.group,
            new.attempt, new.errors) == (evq.JobState.PENDING, "q", "n", 3, 1, "g", 0, 0)
    assert new.run_at.timestamp() == clock.now()
    [enqueue] = await ledger.history("again-1")
    assert enqueue.data["retry_of"] == job.id and enqueue.data["payload"] == {"n": 1}
    [attempt] = await claim(ledger)
    assert (attempt.job_id, attempt.attempt) == ("again-1", 1)


@pytest.mark.parametrize("how", ["pending", "running", "succeeded"])
async def test_retry_of_a_job_that_has_not_ended_badly_is_refused(
        ledger: Ledger, clock: evq.FakeClock, how: str) -> None:
    if how == "succeeded":
        job_id = await ended_job(ledger, clock, how)
    else:
        job = new_job(clock)
        await ledger.enqueue([job])
        job_id = job.id
        if how == "running":
            await claim(ledger)
    head = await ledger.head()
    with pytest.raises(evq.JobStateConflict, match=job_id):
        await ledger.retry(job_id, "again-2", None)
    assert await ledger.head() == head and await ledger.get_job("again-2") is None


async def test_a_deleted_job_cannot_be_retried(ledger: Ledger, clock: evq.FakeClock) -> None:
    job_id = await ended_job(ledger, clock, "failed")
    await ledger.delete(job_id, None)
    with pytest.raises(evq.UnknownJob, match=job_id):
        await ledger.retry(job_id, "again-3", None)


async def test_run_now_makes_a_delayed_job_due_and_refuses_any_other(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    # The operator's actions run on the wall clock: "later" is an hour after it.
    later = new_job(clock, delay=time.time() - clock.now() + 3600)
    due, ended = new_job(clock), await ended_job(ledger, clock, "succeeded")
    await ledger.enqueue([later, due])
    before = time.time()
    when = ledger.run_now_job(later.id, "the customer is waiting")
    assert before <= when <= time.time()
    event = (await ledger.history(later.id))[-1]
    assert (event.kind, event.data["reason"]) == ("run_now", "the customer is waiting")
    assert event.data["was"] == pytest.approx(later.run_at)
    record = await ledger.get_job(later.id)
    assert record is not None and record.run_at.timestamp() == pytest.approx(when)
    head = await ledger.head()
    assert ledger.run_now_job(due.id, None) == pytest.approx(due.run_at)  # keeps its time
    assert await ledger.head() == head  # and nothing is written for it
    clock.set(time.time())
    running = {attempt.job_id for attempt in await claim(ledger, limit=10)}
    assert running == {later.id, due.id}
    head, jobs = await ledger.head(), await ledger.jobs()
    for job_id, error, says in ((later.id, evq.JobStateConflict, "is running"),
                                (ended, evq.JobStateConflict, "is succeeded"),
                                ("no-such-job", evq.UnknownJob, "no job no-such-job")):
        with pytest.raises(error, match=says):
            ledger.run_now_job(job_id, None)
    assert (await ledger.head(), await ledger.jobs()) == (head, jobs)


async def test_run_now_from_a_process_uses_its_clock(ledger: Ledger, clock: evq.FakeClock
                                                     ) -> None:
    later = new_job(clock, delay=600.0)
    await ledger.enqueue([later])
    assert await claim(ledger) == []
    assert await ledger.run_now(later.id, None) == clock.now()
    assert [attempt.job_id for attempt in await claim(ledger)] == [later.id]
    with pytest.raises(evq.JobStateConflict, match="is running"):
        await ledger.run_now(later.id, None)
