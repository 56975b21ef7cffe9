"""The orchestrator on a fake clock: schedules, leadership, cleanup, orphans, restarts."""

from __future__ import annotations

import functools

import pytest

import evq
from evq.ledger.sqlite import ops, replay
from evq.testing import kinds_of


def kinds(events: list[evq.Event], *wanted: str) -> list[evq.Event]:
    return [e for e in events if e.kind in wanted]


async def test_interval_schedule_fires_once_per_due_time(ctx, clock):
    ran: list[int] = []
    ctx.define("heartbeat", lambda p: ran.append(1), repeat=60)
    orch = ctx.orchestrator(name="o1")
    assert (await orch.tick()).fired[0].kind == "schedule"  # first run: now
    assert (await orch.tick()).fired == []
    clock.advance(59)
    assert (await orch.tick()).fired == []
    clock.advance(1)
    [fired] = (await orch.tick()).fired
    assert fired.due_at == clock.now()
    await ctx.drain()
    assert ran == [1, 1]
    schedule = kinds(await ctx.events(), "schedule")[-1]
    assert schedule.data["next_at"] == clock.now() + 60 and schedule.data["missed"] == 0
    assert replay.check(ctx.path).ok


async def test_downtime_fires_once_and_says_how_many_it_skipped(ctx, clock):
    ctx.define("report", lambda p: None, repeat=60)
    orch = ctx.orchestrator()
    await orch.tick()
    start = clock.now()
    clock.advance(60 * 10 + 5)
    [fired] = (await orch.tick()).fired
    assert (fired.due_at, fired.missed) == (start + 60, 9)
    assert fired.next_at == start + 660
    assert (await orch.tick()).fired == []


async def test_two_orchestrators_fire_a_schedule_once(db, clock):
    async with evq.Context(db, clock=clock) as a, evq.Context(db, clock=clock) as b:
        for ctx in (a, b):
            ctx.define("tick", lambda p: None, repeat=30)
        oa, ob = a.orchestrator(name="a"), b.orchestrator(name="b")
        for _ in range(4):
            await oa.tick()
            await ob.tick()
            clock.advance(30)
        schedules = kinds(await a.events(), "schedule")
        assert len(schedules) == 4
        assert len({e.data["due_at"] for e in schedules}) == 4
        # Even a process that wrongly believes it leads cannot fire a due time twice:
        # the ledger refuses a schedule event for any due time but the expected one.
        fired_due = schedules[-1].data["due_at"]
        with pytest.raises(evq.LeaseLost):
            await a.ledger.writer.run(lambda tx: tx.append(
                "schedule", queue="default", job="tick",
                data={"spec": "every 30s", "due_at": fired_due, "next_at": fired_due + 30}))
        assert len(kinds(await a.events(), "schedule")) == 4


async def test_cron_schedule_waits_for_its_first_match(ctx, clock):
    clock.set(1767225600.0)  # 2026-01-01 00:00 UTC
    ctx.define("nightly", lambda p: None, cron="30 2 * * *")
    orch = ctx.orchestrator()
    assert [f.kind for f in (await orch.tick()).fired] == ["registered"]
    clock.advance(2 * 3600 + 29 * 60)
    assert (await orch.tick()).fired == []
    clock.advance(60)
    [fired] = (await orch.tick()).fired
    assert fired.kind == "schedule" and fired.next_at == fired.due_at + 86400


async def test_schedule_without_a_definition_is_a_schedule_orphan(db, clock):
    async with evq.Context(db, clock=clock) as app, evq.Context(db, clock=clock) as ops_box:
        app.define("digest", lambda p: None, repeat=300)
        assert await app.deploy() == ["digest"]
        assert await app.deploy() == []  # unchanged: no second deploy event
        orch = ops_box.orchestrator()
        await orch.tick()  # registers the deployed schedule
        clock.advance(1)
        [fired] = (await orch.tick()).fired
        assert fired.kind == "schedule_orphan"
        assert await ops_box.jobs() == []
        orphan = kinds(await ops_box.events(), "schedule_orphan")[0]
        assert "no definition" in orphan.data["reason"]


async def test_deploy_records_changes(db, clock):
    async with evq.Context(db, clock=clock) as first:
        first.define("job", None, queue="a", max_attempts=2)
        await first.deploy()
    async with evq.Context(db, clock=clock) as second:
        second.define("job", None, queue="a", max_attempts=5)
        assert await second.deploy() == ["job"]
        deploys = kinds(await second.events(), "deploy")
        assert [e.data["max_attempts"] for e in deploys] == [2, 5]
    assert replay.check(db).ok


async def test_leadership_moves_when_the_leader_goes_silent(db, clock):
    async with evq.Context(db, clock=clock) as a, evq.Context(db, clock=clock) as b:
        oa = a.orchestrator(name="alpha", leader_lease=10)
        ob = b.orchestrator(name="beta", leader_lease=10)
        assert (await oa.tick()).leader
        assert not (await ob.tick()).leader
        clock.advance(9)
        assert (await oa.tick()).leader  # renewed
        clock.advance(9)
        assert not (await ob.tick()).leader
        clock.advance(10)  # alpha has died: its lease runs out
        assert (await ob.tick()).leader
        assert not (await oa.tick()).leader
        leaders = kinds(await a.events(), "leader")
        assert [(e.worker, e.data["previous"]) for e in leaders] == [
            ("alpha", None), ("beta", "alpha")]


async def test_cleanup_windows_are_independent(ctx, clock):
    ctx.queue("default", cleanup=evq.Cleanup(completed_after=60, failed_after=3600))
    ctx.define("ok", lambda p: None)
    ctx.define("bad", lambda p: 1 / 0, max_attempts=1)
    good = await ctx.enqueue("ok")
    bad = await ctx.enqueue("bad")
    pending = await ctx.enqueue("ok", delay=10_000)
    await ctx.drain()
    orch = ctx.orchestrator()
    clock.advance(59)
    assert (await orch.tick()).cleaned == 0
    clock.advance(1)
    assert (await orch.tick()).cleaned == 1
    assert await ctx.get_job(good) is None and await ctx.get_job(bad) is not None
    clock.advance(3600)
    assert (await orch.tick()).cleaned == 1
    assert await ctx.get_job(bad) is None
    assert await ctx.get_job(pending) is not None
    assert (await kinds_of(ctx, good))[-1] == "delete"
    assert kinds(await ctx.history(bad), "delete")[0].data["reason"] == "cleanup"


async def test_jobs_no_live_worker_can_run_are_reported_once(db, clock):
    async with evq.Context(db, clock=clock) as app, evq.Context(db, clock=clock) as server:
        app.define("ghost", None)
        app.define("real", None)
        server.define("real", lambda p: None)
        ghost = await app.enqueue("ghost")
        await app.enqueue("real")
        await server.drain()  # registers a live worker that runs "real" only
        orch = app.orchestrator(orphan_after=30)
        assert (await orch.tick()).orphans == []
        clock.advance(30)
        assert (await orch.tick()).orphans == [ghost]
        assert (await orch.tick()).orphans == []
        assert (await app.get_job(ghost)).orphaned_at is not None
        server.define("ghost", lambda p: "found")
        await server.drain()
        assert (await app.get_job(ghost)).result == "found"


async def test_restarted_worker_takes_back_its_running_jobs_first(ctx, clock):
    ctx.queue("default", retry_jobs_running_before_restart=True)
    order: list[str] = []
    ctx.define("job", order.append)
    old = await ctx.enqueue("job", "old")
    await ctx.ledger.writer.run(functools.partial(
        ops.claim, queues=["default"], names_json='["job"]', limit=1, worker="w1",
        lease_seconds=lambda n: 3600))
    clock.advance(1)
    await ctx.enqueue("job", "new")
    await ctx.drain(name="w1", concurrency=1)
    assert order == ["old", "new"]
    requeue = kinds(await ctx.history(old), "requeue")[0]
    assert requeue.data["reason"] == "worker_restart"
    assert (await ctx.get_job(old)).errors == 0


async def test_orchestrator_rescues_expired_leases(ctx, clock):
    ctx.define("job", lambda p: None, lease=5)
    job_id = await ctx.enqueue("job")
    await ctx.ledger.writer.run(functools.partial(
        ops.claim, queues=["default"], names_json='["job"]', limit=1, worker="gone",
        lease_seconds=lambda n: 5))
    clock.advance(5)
    assert (await ctx.orchestrator().tick()).rescued == 1
    assert (await ctx.get_job(job_id)).state is evq.JobState.PENDING


async def test_orchestrator_archives_old_deleted_jobs_on_a_schedule(ctx, clock, tmp_path):
    from evq import archive as archiving
    from evq.ledger.sqlite import chain, connection

    ctx.queue("default", cleanup=evq.Cleanup(completed_after=60))
    ctx.define("job", lambda p: None)
    job_id = await ctx.enqueue("job")
    await ctx.drain()
    orch = ctx.orchestrator(archive_to=tmp_path / "archive", archive_after=3600,
                            archive_every=7200)
    clock.advance(60)
    round_ = await orch.tick()
    assert (round_.cleaned, round_.archived) == (1, 0)  # deleted now: not old enough
    clock.advance(3600)
    assert (await orch.tick()).archived == 0  # old enough, but no archive round is due
    clock.advance(3600)
    assert (await orch.tick()).archived == 5  # enqueue, dequeue, run, success, delete
    files = list((tmp_path / "archive").iterdir())
    assert len(files) == 1 and await ctx.history(job_id) == []
    conn = connection.connect(ctx.path, read_only=True)
    assert chain.check(conn).unchecked_events == 5  # the file kept apart: not checked
    found = chain.check(conn, files=archiving.read_files(files))
    assert found.complete and found.checked == 5
    conn.close()
