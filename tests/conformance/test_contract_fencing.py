"""Fencing: a worker's writes count only while it holds the attempt. A report, a run or
a heartbeat from a stale attempt or another holder is refused (LeaseLost, or None for a
heartbeat) and leaves the ledger exactly as it was; a job succeeds at most once."""

from __future__ import annotations

import attrs
import pytest
from ledger_kit import claim, failure, job_kinds, new_job, state, success

import evq
from evq.ledger import Ledger, records
from evq.outcomes import RetryPolicy
from evq.rescuing import rescue_of
from evq.retry import Fixed


async def unchanged(ledger: Ledger) -> tuple[int, list[evq.JobRecord]]:
    return await ledger.head(), await ledger.jobs()


async def test_a_report_by_another_holder_or_attempt_is_refused_and_changes_nothing(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    job = new_job(clock)
    await ledger.enqueue([job])
    [attempt] = await claim(ledger, "w1")
    before = await unchanged(ledger)
    for stranger in (attrs.evolve(attempt, worker="w2"),
                     attrs.evolve(attempt, attempt=attempt.attempt + 1),
                     attrs.evolve(attempt, attempt=attempt.attempt - 1)):
        with pytest.raises(evq.LeaseLost):
            await ledger.report(stranger, success())
        with pytest.raises(evq.LeaseLost):
            await ledger.report(stranger, failure(0, 3))
        with pytest.raises(evq.LeaseLost):
            await ledger.start_run(stranger)
        assert await ledger.heartbeat([records.Beat(stranger, 60.0)]) == [None]
        assert await unchanged(ledger) == before
    await ledger.report(attempt, success())  # the holder still can
    assert await state(ledger, job.id) == "succeeded"


async def test_a_job_succeeds_at_most_once(ledger: Ledger, clock: evq.FakeClock) -> None:
    job = new_job(clock)
    await ledger.enqueue([job])
    [attempt] = await claim(ledger)
    await ledger.report(attempt, success(1))
    before = await unchanged(ledger)
    with pytest.raises(evq.LeaseLost):
        await ledger.report(attempt, success(2))
    with pytest.raises(evq.LeaseLost):
        await ledger.report(attempt, failure(0, 3))
    assert await unchanged(ledger) == before
    assert (await job_kinds(ledger, job.id)).count("success") == 1
    record = await ledger.get_job(job.id)
    assert record is not None and record.result == 1


async def test_heartbeats_renew_held_leases_and_answer_none_for_lost_ones(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    kept, lost = new_job(clock), new_job(clock)
    await ledger.enqueue([kept, lost])
    attempts = {a.job_id: a for a in await claim(ledger, lease=30.0)}
    await ledger.cancel(lost.id, "not wanted")
    clock.advance(20)
    renewed = await ledger.heartbeat([records.Beat(attempts[kept.id], 60.0),
                                      records.Beat(attempts[lost.id], 60.0)])
    assert renewed == [clock.now() + 60.0, None]
    record = await ledger.get_job(kept.id)
    assert record is not None and record.lease_until is not None
    assert record.lease_until.timestamp() == clock.now() + 60.0
    clock.advance(30)  # past the first lease, within the renewed one
    assert (await ledger.expired_leases())[0] == []


async def test_a_rescued_jobs_old_holder_cannot_complete_it(ledger: Ledger,
                                                            clock: evq.FakeClock) -> None:
    job = new_job(clock, attempts=3)
    await ledger.enqueue([job])
    [old] = await claim(ledger, "w1", lease=10.0)
    clock.advance(11)
    [lease], _ = await ledger.expired_leases()
    assert await ledger.rescue([rescue_of(lease, RetryPolicy(3, Fixed(0.0)))], "rescuer") == 1
    before = await unchanged(ledger)
    with pytest.raises(evq.LeaseLost):
        await ledger.report(old, success())
    assert await ledger.heartbeat([records.Beat(old, 30.0)]) == [None]
    assert await unchanged(ledger) == before
    [new] = await claim(ledger, "w2")
    assert new.attempt == old.attempt + 1
    with pytest.raises(evq.LeaseLost):  # nor once another worker holds it
        await ledger.report(old, success())
    await ledger.report(new, success("w2's"))
    record = await ledger.get_job(job.id)
    assert record is not None and (record.result, record.worker) == ("w2's", "w2")
    assert (await job_kinds(ledger, job.id)).count("success") == 1


async def test_a_cancelled_running_job_is_lost_to_its_worker(ledger: Ledger,
                                                             clock: evq.FakeClock) -> None:
    job, other = new_job(clock), new_job(clock)
    await ledger.enqueue([job, other])
    attempts = await claim(ledger)
    stopped = await ledger.cancel(job.id, "operator")
    assert stopped == [records.Stopped(job.id, True)]
    assert await ledger.cancelled_among([a.job_id for a in attempts]) == [job.id]
    with pytest.raises(evq.LeaseLost):
        await ledger.report(next(a for a in attempts if a.job_id == job.id), success())
    assert await state(ledger, job.id) == "cancelled"
