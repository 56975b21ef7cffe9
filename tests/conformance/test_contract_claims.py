"""Claims: due jobs in priority, then run_at, then enqueue order; queue concurrency limits
and one running job per group held across every handle on the ledger; paused queues
skipped; no attempt claimed twice; a job claimed to be asked okay_to_run first gets no
run event until it starts."""

from __future__ import annotations

import asyncio

from ledger_kit import Commits, claim, job_kinds, kinds, new_job, success

import evq
from evq.ledger import Ledger


async def test_jobs_come_by_priority_then_run_at_then_enqueue_order(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    jobs = {
        "late-high": new_job(clock, priority=5, delay=-10.0),
        "early-low": new_job(clock, priority=-1, delay=-50.0),
        "early-mid": new_job(clock, priority=0, delay=-30.0),
        "late-mid": new_job(clock, priority=0, delay=-20.0),
        "late-mid-2": new_job(clock, priority=0, delay=-20.0),
        "first-high": new_job(clock, priority=5, delay=-40.0),
    }
    await ledger.enqueue(list(jobs.values()))
    order = [(await claim(ledger, limit=1))[0].job_id for _ in jobs]
    names = {job.id: name for name, job in jobs.items()}
    assert [names[i] for i in order] == [
        "first-high", "late-high", "early-mid", "late-mid", "late-mid-2", "early-low"]


async def test_one_claim_orders_across_queues_and_keeps_to_its_limit(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    low = [new_job(clock, "a") for _ in range(3)]
    high = [new_job(clock, "b", priority=1) for _ in range(3)]
    await ledger.enqueue(low + high)
    taken = await claim(ledger, queues=["a", "b"], limit=4)
    assert [a.job_id for a in taken] == [j.id for j in high] + [j.id for j in low[:1]]


async def test_a_worker_claims_only_its_queues_and_names(ledger: Ledger,
                                                         clock: evq.FakeClock) -> None:
    mine, other_name, other_queue = (new_job(clock, "q", "n"), new_job(clock, "q", "m"),
                                     new_job(clock, "r", "n"))
    await ledger.enqueue([mine, other_name, other_queue])
    assert [a.job_id for a in await claim(ledger, queues=["q"], names=["n"])] == [mine.id]


async def test_a_queue_limit_holds_across_handles(ledger: Ledger, other: Ledger,
                                                  clock: evq.FakeClock) -> None:
    jobs = [new_job(clock) for _ in range(5)]
    await ledger.enqueue(jobs)
    limits = {"q": 2}
    first = await claim(ledger, "w1", limit=10, queue_limits=limits)
    assert len(first) == 2
    assert await claim(other, "w2", limit=10, queue_limits=limits) == []
    assert await claim(other, "w2", limit=10, queue_limits={"q": 3}) != []  # its own view
    await ledger.report(first[0], success())
    assert await claim(other, "w3", limit=10, queue_limits={"q": 3}) != []
    assert await claim(ledger, "w1", limit=10, queue_limits=limits) == []
    assert (await ledger.counts())["running"] == 3


async def test_one_job_of_a_group_runs_at_a_time(ledger: Ledger, other: Ledger,
                                                 clock: evq.FakeClock) -> None:
    grouped = [new_job(clock, group="acct-1") for _ in range(3)]
    free = [new_job(clock) for _ in range(2)]
    await ledger.enqueue(grouped + free)
    # The group's jobs stand first; one of them, then the jobs behind them, are taken.
    taken = await claim(ledger, "w1", limit=3)
    assert [a.job_id for a in taken] == [grouped[0].id, free[0].id, free[1].id]
    assert await claim(other, "w2", limit=10) == []  # the group is busy in any process
    await ledger.report(taken[0], success())
    assert [a.job_id for a in await claim(other, "w2", limit=10)] == [grouped[1].id]


async def test_paused_queues_are_skipped_until_resumed(ledger: Ledger,
                                                       clock: evq.FakeClock) -> None:
    held_back, flowing = new_job(clock, "a"), new_job(clock, "b")
    await ledger.enqueue([held_back, flowing])
    head = await ledger.head()
    await ledger.set_paused("a", True, "deploying")
    assert [a.job_id for a in await claim(ledger, queues=["a", "b"])] == [flowing.id]
    await ledger.set_paused("a", False, None)
    assert [a.job_id for a in await claim(ledger, queues=["a", "b"])] == [held_back.id]
    paused = [e for e in await ledger.events(head, 100, False) if e.kind in ("pause", "resume")]
    assert [(e.kind, e.queue, e.data["reason"]) for e in paused] == [
        ("pause", "a", "deploying"), ("resume", "a", None)]


async def test_two_handles_claiming_at_once_never_share_an_attempt(
        ledger: Ledger, other: Ledger, clock: evq.FakeClock) -> None:
    jobs = [new_job(clock) for _ in range(40)]
    await ledger.enqueue(jobs)
    rounds = await asyncio.gather(*(
        claim(handle, worker, limit=3)
        for _ in range(10) for handle, worker in ((ledger, "w1"), (other, "w2"))))
    taken = [a.job_id for attempts in rounds for a in attempts]
    assert sorted(taken) == sorted(j.id for j in jobs)
    dequeues = [e for e in await ledger.events(0, 1000, False) if e.kind == "dequeue"]
    assert len(dequeues) == len(jobs)


async def test_a_job_asked_okay_to_run_first_gets_no_run_event_until_it_starts(
        ledger: Ledger, clock: evq.FakeClock, commits: Commits) -> None:
    asked, plain = new_job(clock, name="careful"), new_job(clock, name="n")
    await ledger.enqueue([asked, plain])
    attempts = {a.job_id: a for a in await claim(
        ledger, names=["careful", "n"], run_later=["careful"])}
    assert await job_kinds(ledger, asked.id) == ["enqueue", "dequeue"]
    assert await job_kinds(ledger, plain.id) == ["enqueue", "dequeue", "run"]
    await ledger.start_run(attempts[asked.id])
    assert await job_kinds(ledger, asked.id) == ["enqueue", "dequeue", "run"]
    assert kinds(commits[-1]) == ["run", "seal"]
    await ledger.report(attempts[asked.id], success())
    assert (await job_kinds(ledger, asked.id))[-1] == "success"
