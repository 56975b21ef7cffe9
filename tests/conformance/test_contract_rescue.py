"""Leases and rescue: a lease past its time is found; rescuing it puts the job back with
the attempt counted, or expires it once no attempt is left; a lease renewed, ended or
rescued meanwhile is left alone."""

from __future__ import annotations

from ledger_kit import claim, job_kinds, new_job, request, state, success

import evq
from evq.ledger import Ledger, records
from evq.outcomes import RetryPolicy
from evq.rescuing import rescue_of
from evq.retry import Fixed


def decided(leases: list[records.Expired], backoff: float = 0.0) -> list[records.Rescue]:
    return [rescue_of(lease, RetryPolicy(lease.max_attempts, Fixed(backoff)))
            for lease in leases]


async def test_a_lease_is_found_only_once_past_its_time(ledger: Ledger,
                                                        clock: evq.FakeClock) -> None:
    job = new_job(clock, attempts=4)
    await ledger.enqueue([job])
    [attempt] = await claim(ledger, "w1", lease=10.0)
    clock.advance(9.5)
    assert (await ledger.expired_leases())[0] == []
    clock.advance(0.5)
    found, _ = await ledger.expired_leases()
    assert found == [records.Expired(job.id, "q", "n", 1, 0, 4, "w1", clock.now())]
    # A worker's claim finds them too (it rescues them after its commit).
    result = await ledger.claim(request("w2"))
    assert result.claimed == [] and result.expired == found
    assert await state(ledger, attempt.job_id) == "running"  # finding is not rescuing


async def test_a_rescue_puts_the_job_back_with_the_attempt_counted(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    job = new_job(clock, attempts=3)
    await ledger.enqueue([job])
    await claim(ledger, "w1", lease=10.0)
    clock.advance(10)
    found, _ = await ledger.expired_leases()
    assert await ledger.rescue(decided(found, backoff=5.0), "orchestrator") == 1
    record = await ledger.get_job(job.id)
    assert record is not None
    assert (record.state, record.attempt, record.errors, record.lease_until) == (
        evq.JobState.PENDING, 1, 1, None)
    assert record.run_at.timestamp() == clock.now() + 5.0
    rescue = (await ledger.history(job.id))[-1]
    assert (rescue.kind, rescue.attempt, rescue.worker) == ("rescue", 1, "orchestrator")
    assert rescue.data["holder"] == "w1"
    assert await claim(ledger, "w2") == []
    clock.advance(5)
    [again] = await claim(ledger, "w2")
    assert again.attempt == 2
    await ledger.report(again, success())
    assert await state(ledger, job.id) == "succeeded"


async def test_a_rescue_expires_the_job_at_max_attempts(ledger: Ledger,
                                                        clock: evq.FakeClock) -> None:
    job = new_job(clock, attempts=1)
    await ledger.enqueue([job])
    await claim(ledger, lease=10.0)
    clock.advance(10)
    found, _ = await ledger.expired_leases()
    assert await ledger.rescue(decided(found), "orchestrator") == 1
    record = await ledger.get_job(job.id)
    assert record is not None and (record.state, record.errors) == (evq.JobState.EXPIRED, 1)
    assert (await job_kinds(ledger, job.id))[-2:] == ["rescue", "expire"]
    assert (await ledger.expired_leases())[0] == [] and await claim(ledger) == []


async def test_a_lease_renewed_meanwhile_is_not_rescued(ledger: Ledger,
                                                        clock: evq.FakeClock) -> None:
    job = new_job(clock)
    await ledger.enqueue([job])
    [attempt] = await claim(ledger, lease=10.0)
    clock.advance(10)
    found, _ = await ledger.expired_leases()
    assert len(found) == 1
    # The holder's heartbeat lands between the rescuer's finding and its write.
    assert await ledger.heartbeat([records.Beat(attempt, 30.0)]) == [clock.now() + 30.0]
    head = await ledger.head()
    assert await ledger.rescue(decided(found), "orchestrator") == 0
    assert await ledger.head() == head
    await ledger.report(attempt, success())
    assert await state(ledger, job.id) == "succeeded"


async def test_a_lease_ended_or_rescued_meanwhile_is_not_rescued_again(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    done, twice = new_job(clock), new_job(clock)
    await ledger.enqueue([done, twice])
    attempts = {a.job_id: a for a in await claim(ledger, lease=10.0)}
    clock.advance(10)
    found, _ = await ledger.expired_leases()
    assert sorted(lease.job_id for lease in found) == sorted([done.id, twice.id])
    await ledger.report(attempts[done.id], success())  # its worker finished after all
    assert await ledger.rescue(decided(found), "r1") == 1
    head = await ledger.head()
    assert await ledger.rescue(decided(found), "r2") == 0  # a second rescuer, same finding
    assert await ledger.head() == head
    assert await state(ledger, done.id) == "succeeded"
    assert (await job_kinds(ledger, twice.id)).count("rescue") == 1


async def test_a_claim_says_when_to_look_again(ledger: Ledger, clock: evq.FakeClock) -> None:
    await ledger.enqueue([new_job(clock), new_job(clock, delay=100.0)])
    result = await ledger.claim(request(limit=5, lease=30.0))
    assert len(result.claimed) == 1
    assert result.next_at == clock.now() + 30.0  # the lease runs out before the next is due
