"""The leader's and the workers' housekeeping: worker names (one live holder; a restarted
worker takes back what its previous run held), exhausted-attempts hooks (leased to one
runner at a time), definitions recorded when they change, schedules fired once per due
time, cleanup by queue, state and age, and orphans reported once."""

from __future__ import annotations

import secrets

import pytest
from ledger_kit import claim, failure, job_kinds, new_job, state, success

import evq
from evq.ledger import Ledger, audit_records, records
from evq.outcomes import RetryPolicy, after_failure
from evq.retry import Fixed
from evq.schedules import Cron, Every


def announce(*names: str, chosen: str | None = None, restart: tuple[str, ...] = (),
             gone: bool = False) -> records.Announce:
    return records.Announce(names, chosen, ("n",), restart, lambda *_: gone, lambda _: None)


async def test_a_worker_takes_the_first_name_no_live_worker_holds(
        ledger: Ledger, other: Ledger) -> None:
    first = await ledger.announce_worker(announce("web:q", "web:q-2"))
    assert first.name == "web:q" and first.released == ()
    second = await other.announce_worker(announce("web:q", "web:q-2"))
    assert second.name == "web:q-2"
    with pytest.raises(evq.InvalidInput, match="web:q"):
        await other.announce_worker(announce("web:q", chosen="web:q"))
    await ledger.forget_worker("web:q")
    assert (await other.announce_worker(announce("web:q"))).name == "web:q"


async def test_the_readers_list_workers_and_paused_queues(ledger: Ledger,
                                                          clock: evq.FakeClock) -> None:
    assert ledger.workers() == [] and ledger.paused_queues() == []
    await ledger.announce_worker(announce("web:q"))
    await ledger.announce_worker(announce("api:q"))
    await ledger.set_paused("mail", True, "maintenance")
    await ledger.set_paused("geo", True, None)
    await ledger.set_paused("geo", False, None)
    seen = ledger.workers()
    assert [w.name for w in seen] == ["api:q", "web:q"]
    assert all(w.jobs == ("n",) and w.last_seen == clock.now() for w in seen)
    assert ledger.paused_queues() == ["mail"]
    await ledger.forget_worker("web:q")
    assert [w.name for w in ledger.workers()] == ["api:q"]
    ledger.pause_queue("geo", True, "from an operator")  # its own transaction
    ledger.pause_queue("mail", False, None)
    assert ledger.paused_queues() == ["geo"]
    kinds = [(e.kind, e.queue) for e in await ledger.events(0, 1000, False)][-2:]
    assert kinds == [("pause", "geo"), ("resume", "mail")]


async def test_the_ledger_says_how_much_room_it_takes(ledger: Ledger,
                                                     clock: evq.FakeClock) -> None:
    before = ledger.storage_size()
    await ledger.enqueue([new_job(clock, payload={"pad": secrets.token_hex(1000)})
                          for _ in range(300)])
    after = ledger.storage_size()
    assert after.total_bytes > before.total_bytes + 300 * 2000 // 4
    postgres = ledger.location.startswith("postgresql://")
    assert (after.wal_bytes is None) == postgres
    assert postgres or 0 < (after.wal_bytes or 0) <= after.total_bytes


async def test_a_restarted_worker_takes_back_what_its_previous_run_held(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    jobs = [new_job(clock), new_job(clock)]
    await ledger.enqueue(jobs)
    held = await claim(ledger, "web:q")
    # The previous run is gone; the new one puts its jobs back at once, no attempt counted.
    again = await ledger.announce_worker(announce("web:q", restart=("q",), gone=True))
    assert again.name == "web:q" and sorted(again.released) == sorted(j.id for j in jobs)
    for job in jobs:
        record = await ledger.get_job(job.id)
        assert record is not None and (record.state, record.errors) == (
            evq.JobState.PENDING, 0)
    with pytest.raises(evq.LeaseLost):
        await ledger.report(held[0], success())


async def test_an_exhausted_jobs_hook_runs_under_one_runner_at_a_time(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    job = new_job(clock, attempts=1)
    await ledger.enqueue([job])
    [attempt] = await claim(ledger)
    await ledger.report(attempt, after_failure(
        "error", {"type": "E", "message": "x", "traceback": ""}, 0,
        RetryPolicy(1, Fixed(0.0), exhausted_hook=True)))
    taken, _ = await ledger.take_hook(["n"], "r1", 20.0)
    assert taken is not None and taken.id == job.id
    record = await ledger.get_job(job.id)
    assert record is not None and record.hook_state == "running"
    assert await ledger.take_hook(["n"], "r2", 20.0) == (None, clock.now() + 20.0)
    mine = records.Attempt(job.id, "q", "n", taken.attempt, "r1")
    await ledger.renew_hook(mine, 30.0)
    clock.advance(25)
    assert (await ledger.take_hook(["n"], "r2", 20.0))[0] is None  # renewed: still r1's
    clock.advance(10)
    overtaken, _ = await ledger.take_hook(["n"], "r2", 20.0)  # r1's lease ran out
    assert overtaken is not None and overtaken.id == job.id
    with pytest.raises(evq.LeaseLost):
        await ledger.finish_hook(mine, None)
    await ledger.finish_hook(records.Attempt(job.id, "q", "n", taken.attempt, "r2"), None)
    record = await ledger.get_job(job.id)
    assert record is not None and (record.state, record.hook_state) == (
        evq.JobState.EXPIRED, "done")
    assert await ledger.take_hook(["n"], "r3", 20.0) == (None, None)


async def test_definitions_are_recorded_when_they_change(ledger: Ledger) -> None:
    settings = {"queue": "q", "max_attempts": 3}
    assert await ledger.deploy({"n": ("q", settings), "m": ("q", {})}) == ["m", "n"]
    assert await ledger.deploy({"n": ("q", settings)}) == []
    assert await ledger.deploy({"n": ("q", {**settings, "max_attempts": 5})}) == ["n"]
    deployed = [e for e in await ledger.events(0, 100, False) if e.kind == "deploy"]
    assert [(e.job, e.data.get("max_attempts")) for e in deployed] == [
        ("m", None), ("n", 3), ("n", 5)]


async def test_a_schedule_fires_once_per_due_time(ledger: Ledger, other: Ledger,
                                                  clock: evq.FakeClock) -> None:
    local = {"n": ("q", Every(60.0))}
    await ledger.deploy({"n": ("q", {"repeat": 60.0}), "m": ("q", {})})
    first = new_job(clock)
    [fired] = await ledger.fire_schedules(local, {"n": first})
    assert (fired.name, fired.job_id, fired.next_at) == ("n", first.id, clock.now() + 60.0)
    assert await other.fire_schedules(local, {"n": new_job(clock)}) == []  # not due again
    assert ledger.definitions()[1].last_at == pytest.approx(clock.now(), abs=1e-6)
    # A schedule that only registered (a cron whose first time is ahead) has not fired.
    nightly = {"c": ("q", Cron("0 3 * * *"))}
    await ledger.deploy({"c": ("q", {"cron": "0 3 * * *"})})
    [registers] = await ledger.fire_schedules(nightly, {"c": new_job(clock)})
    assert (registers.kind, registers.job_id) == ("registered", None)
    registered = [d for d in ledger.definitions() if d.name == "c"]
    assert registered[0].next_at is not None and registered[0].last_at is None
    clock.advance(61)
    second = new_job(clock)
    [fired] = await other.fire_schedules(local, {"n": second})
    assert fired.job_id == second.id
    assert await state(ledger, first.id) == await state(ledger, second.id) == "pending"
    assert [d for d in ledger.definitions() if d.name != "c"] == [
        audit_records.Deployed("m", "q", {}),
        audit_records.Deployed("n", "q", {"repeat": 60.0}, "every 60s", fired.next_at,
                               pytest.approx(clock.now(), abs=1e-6))]


async def test_cleanup_removes_finished_jobs_by_queue_state_and_age(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    done, failed, other_queue, young = (new_job(clock), new_job(clock, attempts=1),
                                        new_job(clock, "r"), new_job(clock))
    await ledger.enqueue([done, failed, other_queue, young])
    attempts = {a.job_id: a for a in await claim(ledger, queues=["q", "r"], limit=3)}
    await ledger.report(attempts[done.id], success())
    await ledger.report(attempts[failed.id], failure(0, 1, retryable=False))
    await ledger.report(attempts[other_queue.id], success())
    clock.advance(100)
    [last] = await claim(ledger)
    await ledger.report(last, success())
    assert await ledger.cleanup([("q", ["succeeded"], 50.0)], 100) == 1
    assert await ledger.get_job(done.id) is None
    for kept in (failed, other_queue, young):
        assert await ledger.get_job(kept.id) is not None
    assert (await job_kinds(ledger, done.id))[-1] == "delete"


async def test_orphans_are_reported_once(ledger: Ledger, clock: evq.FakeClock) -> None:
    runnable, orphan = new_job(clock, name="n"), new_job(clock, name="nobody-runs-me")
    await ledger.enqueue([runnable, orphan])
    await ledger.announce_worker(announce("web:q"))
    clock.advance(30)
    assert await ledger.report_orphans(worker_ttl=60.0, after=10.0, limit=10) == [orphan.id]
    assert await ledger.report_orphans(worker_ttl=60.0, after=10.0, limit=10) == []
    assert (await job_kinds(ledger, orphan.id))[-1] == "orphan"
