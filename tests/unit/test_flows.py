"""Flows on a fake clock: trees of jobs across queues, parents that wait for their
children, each failure option, adding children, idempotent trees, cancel cascades."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import evq
from evq import FlowJob
from evq.archive import archive
from evq.ledger.sqlite import maintenance, replay
from evq.testing import kinds_of, settle


async def count_events(ctx: evq.Context) -> int:
    return len(await ctx.events(limit=100_000))


async def run_all(ctx: evq.Context, clock: evq.FakeClock, rounds: int = 8,
                  step: float = 60.0) -> None:
    """Drain, then let retry backoffs come due, a few times over."""
    for _ in range(rounds):
        await ctx.drain()
        clock.advance(step)
    await ctx.drain()


async def test_the_dns_flow_of_the_seed_runs_to_completion(ctx, clock):
    """Seed 004: write a DB row, create a DNS record, poll until it is live, then sync
    the status, each step in its own queue, with retries and exponential backoff."""
    dns: dict[str, str] = {}
    polls: list[str] = []
    db: dict[str, str] = {}

    @ctx.job(queue="add-db-record", max_attempts=5, backoff=evq.Exponential(15))
    def add_db_record(record: dict[str, str]) -> dict[str, Any]:
        db[record["name"]] = "pending"
        return {"row": record["name"]}

    @ctx.job(queue="create-dns-record", max_attempts=5, backoff=evq.Exponential(15))
    def create_dns_record(record: dict[str, str]) -> dict[str, Any]:
        dns[record["name"]] = "PENDING"
        return {"change_id": "C-1"}

    @ctx.job(queue="check-dns-status", max_attempts=5, backoff=evq.Exponential(60))
    def check_dns_status(record: dict[str, str], job: evq.Job) -> dict[str, Any]:
        polls.append(dns[record["name"]])
        if len(polls) == 3:
            dns[record["name"]] = "INSYNC"  # the fake DNS goes live on the third look
        if dns[record["name"]] != "INSYNC":
            raise RuntimeError("record not live yet")
        return {"status": "live", "change_id": job.child_result("create_dns_record")[
            "change_id"]}

    @ctx.job(queue="sync-db-status", max_attempts=5, backoff=evq.Exponential(30))
    def sync_db_status(record: dict[str, str], job: evq.Job) -> dict[str, Any]:
        status = job.child_result("check_dns_status")["status"]
        db[record["name"]] = status
        return {child.name: child.result for child in job.children}

    record = {"username": "ann", "type": "A", "name": "ann.example", "value": "1.2.3.4"}
    root = await ctx.enqueue_flow(FlowJob("sync_db_status", record, children=[
        FlowJob("add_db_record", record, fail_parent_on_failure=True),
        FlowJob("check_dns_status", record, fail_parent_on_failure=True, children=[
            FlowJob("create_dns_record", record, fail_parent_on_failure=True)])]))
    check_id = root.children[1].id
    assert (await ctx.get_job(root.id)).state is evq.JobState.WAITING
    assert (await ctx.get_job(check_id)).state is evq.JobState.WAITING
    assert {n.queue for n in (await ctx.flow(root.id)).walk()} == {
        "add-db-record", "create-dns-record", "check-dns-status", "sync-db-status"}

    await run_all(ctx, clock, step=120)

    final = await ctx.get_job(root.id)
    assert final.state is evq.JobState.SUCCEEDED
    assert final.result == {"add_db_record": {"row": "ann.example"},
                            "check_dns_status": {"status": "live", "change_id": "C-1"}}
    assert db == {"ann.example": "live"} and polls == ["PENDING", "PENDING", "PENDING"]
    check = await ctx.get_job(check_id)
    assert check.attempt == 3 and check.errors == 2
    assert await kinds_of(ctx, root.id) == [
        "enqueue", "wait", "child", "child", "ready", "dequeue", "run", "success"]
    # The poll step waited for create_dns_record, and ran only after it.
    check_events = await ctx.history(check_id)
    assert [e.kind for e in check_events[:5]] == ["enqueue", "wait", "child", "ready",
                                                 "dequeue"]
    assert replay.check(ctx.path).ok


async def test_a_tree_is_added_whole_or_not_at_all(ctx):
    ctx.define("parent", lambda p: None)

    @ctx.job(payload_type=None)
    def child(p: int) -> None:
        return None

    before = await count_events(ctx)
    with pytest.raises(evq.InvalidPayload, match=r"flow\.children\[1\]\.children\[0\]"):
        await ctx.enqueue_flow(FlowJob("parent", 1, children=[
            FlowJob("child", 1), FlowJob("child", 2, children=[FlowJob("child", {1, 2})])]))
    with pytest.raises(evq.UnknownJob, match=r"flow\.children\[0\]"):
        await ctx.enqueue_flow(FlowJob("parent", children=[FlowJob("nope")]))
    with pytest.raises(evq.InvalidInput, match="at most one of"):
        await ctx.enqueue_flow(FlowJob("parent", children=[FlowJob(
            "child", fail_parent_on_failure=True, ignore_dependency_on_failure=True)]))
    assert await count_events(ctx) == before
    assert await ctx.jobs() == []


async def test_a_refused_job_refuses_the_whole_tree(ctx):
    ctx.define("parent", lambda p: None)
    ctx.define("child", lambda p: None, on_before_add=lambda job, *_: job.payload != "bad")
    with pytest.raises(evq.JobRejected):
        await ctx.enqueue_flow(FlowJob("parent", children=[
            FlowJob("child", "good"), FlowJob("child", "bad")]))
    assert await ctx.jobs() == []
    assert [e.kind for e in await ctx.events()] == ["reject"]


async def test_children_run_before_their_parent_across_queues(ctx, clock):
    order: list[str] = []

    def step(name: str) -> Any:
        def handler(payload: Any) -> str:
            order.append(name)
            return name
        return handler

    for name, queue in (("root", "q1"), ("mid", "q2"), ("leaf", "q3")):
        ctx.define(name, step(name), queue=queue)
    root = await ctx.enqueue_flow(FlowJob("root", children=[
        FlowJob("mid", children=[FlowJob("leaf"), FlowJob("leaf")]), FlowJob("leaf")]))
    await ctx.drain()
    assert order.index("root") == 4 and order.index("mid") == 3
    tree = await ctx.flow(root.children[0].children[0].id)  # any job finds the whole flow
    assert tree is not None and tree.id == root.id
    assert [n.state for n in tree.walk()] == ["succeeded"] * 5


async def test_by_default_a_parent_waits_visibly_for_a_failed_child(ctx, clock):
    ctx.define("parent", lambda p, job: job.children_values)
    outcomes = iter([RuntimeError("down"), RuntimeError("down"), "fixed"])

    def flaky(p: Any) -> Any:
        value = next(outcomes)
        if isinstance(value, Exception):
            raise value
        return value

    ctx.define("flaky", flaky, max_attempts=2, backoff=evq.Fixed(0))
    ctx.define("fine", lambda p: "ok")
    root = await ctx.enqueue_flow(FlowJob("parent", children=[FlowJob("flaky"),
                                                              FlowJob("fine")]))
    flaky_id, fine_id = (c.id for c in root.children)
    await ctx.drain()
    parent = await ctx.get_job(root.id)
    assert parent.state is evq.JobState.WAITING and parent.blocked_by == flaky_id
    assert (await ctx.get_job(flaky_id)).state is evq.JobState.EXPIRED
    child_events = [e.data for e in await ctx.history(root.id) if e.kind == "child"]
    assert {(d["child"], d["outcome"]) for d in child_events} == {
        (flaky_id, "failed"), (fine_id, "succeeded")}

    # Retrying the failed child puts the new job in its place; the parent then runs.
    new_id = await ctx.retry(flaky_id)
    parent = await ctx.get_job(root.id)
    assert parent.state is evq.JobState.WAITING and parent.blocked_by is None
    await ctx.drain()
    parent = await ctx.get_job(root.id)
    assert parent.state is evq.JobState.SUCCEEDED
    assert parent.result == {new_id: "fixed", fine_id: "ok"}
    assert replay.check(ctx.path).ok


async def test_fail_parent_on_failure_fails_every_ancestor(ctx):
    ctx.define("top", lambda p: "never")
    ctx.define("mid", lambda p: "never")

    def broken(p: Any) -> None:
        raise evq.UnrecoverableError("the DNS zone does not exist")

    ctx.define("leaf", broken, max_attempts=5)
    ctx.define("slow", lambda p: "ok", queue="elsewhere")
    root = await ctx.enqueue_flow(FlowJob("top", children=[
        FlowJob("mid", fail_parent_on_failure=True, children=[
            FlowJob("leaf", fail_parent_on_failure=True)]),
        FlowJob("slow")]))
    mid_id = root.children[0].id
    leaf_id = root.children[0].children[0].id
    await ctx.drain(queues=["default"])
    leaf = await ctx.get_job(leaf_id)
    assert leaf.state is evq.JobState.FAILED and leaf.attempt == 1  # no retry
    for job_id in (mid_id, root.id):
        job = await ctx.get_job(job_id)
        assert job.state is evq.JobState.FAILED and job.error["type"] == "ChildFailed"
        fail = (await ctx.history(job_id))[-1]
        assert fail.kind == "fail" and fail.data["reason"] == "child_failed"
    assert "the DNS zone does not exist" in (await ctx.get_job(mid_id)).error["message"]
    # The failed root's other child had not started: it does not run for a dead flow.
    slow = await ctx.get_job(root.children[1].id)
    assert slow.state is evq.JobState.CANCELLED
    assert (await ctx.history(slow.id))[-1].data == {"reason": "parent_failed",
                                                     "parent": root.id}
    assert await ctx.drain(queues=["elsewhere"]) == 0
    assert replay.check(ctx.path).ok


async def test_a_failed_parent_cancels_its_subtree_that_has_not_started(ctx):
    """BullMQ's rule for a failed flow: the parent's pending work does not run on. A
    child already running finishes (its end settles nothing any more)."""
    started, gate = asyncio.Event(), asyncio.Event()

    async def long_step(payload: Any) -> str:
        started.set()
        await gate.wait()
        return "finished anyway"

    ctx.define("report", lambda p: "never")
    ctx.define("render", long_step, queue="render")
    ctx.define("fetch", lambda p: 1 / 0, max_attempts=1, queue="fetch")
    ctx.define("later", lambda p: "never", queue="later")
    root = await ctx.enqueue_flow(FlowJob("report", children=[
        FlowJob("render"),
        FlowJob("fetch", fail_parent_on_failure=True),
        FlowJob("report", children=[FlowJob("later"), FlowJob("later")])]))
    render_id, fetch_id, sub = (node.id for node in root.children)
    render = asyncio.create_task(ctx.drain(queues=["render"]))
    await started.wait()
    await ctx.drain(queues=["fetch"])
    tree = await ctx.flow(root.id)
    states = {node.id: node.state for node in tree.walk()}
    assert states[root.id] == "failed" and states[fetch_id] == "expired"
    assert states[render_id] == "running"
    cancelled = [n for n in tree.walk() if n.state == "cancelled"]
    assert sorted(n.id for n in cancelled) == sorted(
        [sub, *(c.id for c in root.children[2].children)])
    for node in cancelled:
        assert (await ctx.history(node.id))[-1].data["reason"] == "parent_failed"
    assert await ctx.drain(queues=["later", "default"]) == 0
    gate.set()
    assert await render == 1
    assert (await ctx.get_job(render_id)).result == "finished anyway"
    assert (await ctx.get_job(root.id)).state is evq.JobState.FAILED
    assert replay.check(ctx.path).ok


async def test_keep_children_on_failure_lets_a_failed_parents_children_run_on(ctx):
    ran: list[str] = []
    ctx.define("parent", lambda p: "never")
    ctx.define("bad", lambda p: 1 / 0, max_attempts=1, queue="first")
    ctx.define("other", ran.append, queue="second")
    root = await ctx.enqueue_flow(FlowJob("parent", keep_children_on_failure=True, children=[
        FlowJob("bad", fail_parent_on_failure=True), FlowJob("other", "still runs")]))
    await ctx.drain(queues=["first"])
    assert (await ctx.get_job(root.id)).state is evq.JobState.FAILED
    assert (await ctx.history(root.id))[0].data["keep_children"] is True
    await ctx.drain(queues=["second"])
    assert ran == ["still runs"]
    with pytest.raises(evq.InvalidInput, match="keep_children_on_failure"):
        await ctx.enqueue_flow(FlowJob("parent", keep_children_on_failure="yes"))


async def test_ignore_dependency_on_failure_runs_the_parent_with_the_failure(ctx):
    seen: list[tuple[evq.Child, ...]] = []
    ctx.define("parent", lambda p, job: seen.append(job.children) or job.children_values)
    ctx.define("bad", lambda p: 1 / 0, max_attempts=1)
    ctx.define("good", lambda p: 42)
    root = await ctx.enqueue_flow(FlowJob("parent", children=[
        FlowJob("bad", ignore_dependency_on_failure=True), FlowJob("good")]))
    await ctx.drain()
    parent = await ctx.get_job(root.id)
    assert parent.state is evq.JobState.SUCCEEDED
    assert parent.result == {root.children[1].id: 42}
    [children] = seen
    bad = next(c for c in children if c.name == "bad")
    assert bad.state == "ignored" and bad.error["type"] == "ZeroDivisionError"


async def test_remove_dependency_on_failure_drops_the_child(ctx):
    seen: list[tuple[evq.Child, ...]] = []
    ctx.define("parent", lambda p, job: seen.append(job.children) or "ran")
    ctx.define("bad", lambda p: 1 / 0, max_attempts=1)
    root = await ctx.enqueue_flow(FlowJob("parent", children=[
        FlowJob("bad", remove_dependency_on_failure=True)]))
    await ctx.drain()
    assert (await ctx.get_job(root.id)).state is evq.JobState.SUCCEEDED
    [children] = seen
    assert [c.state for c in children] == ["removed"]
    assert (await ctx.history(root.id))[2].data["outcome"] == "removed"


async def test_children_can_be_added_to_a_parent_that_has_not_started(ctx):
    ctx.define("parent", lambda p, job: sorted(job.children_values.values()))
    ctx.define("child", lambda p: p)
    parent = await ctx.enqueue("parent")
    first = await ctx.add_children(parent, [FlowJob("child", 1)])
    assert (await ctx.get_job(parent)).state is evq.JobState.WAITING
    second = await ctx.add_children(parent, [FlowJob("child", 2, children=[
        FlowJob("child", 3)])])
    assert (await ctx.get_job(parent)).children == 2
    assert [e.kind for e in await ctx.history(parent)] == ["enqueue", "wait", "wait"]
    await ctx.drain()
    assert (await ctx.get_job(parent)).result == [1, 2]
    assert (await ctx.get_job(second[0].children[0].id)).result == 3
    assert first[0].added

    with pytest.raises(evq.JobStateConflict, match="has not started"):
        await ctx.add_children(parent, [FlowJob("child", 4)])
    with pytest.raises(evq.UnknownJob):
        await ctx.add_children("0" * 32, [FlowJob("child", 4)])


async def test_a_flow_cannot_be_a_cycle_nor_share_a_child(ctx):
    ctx.define("job", lambda p: None)
    root = await ctx.enqueue_flow(FlowJob("job", key="root", children=[
        FlowJob("job", key="child")]))
    before = await count_events(ctx)
    with pytest.raises(evq.FlowError, match="cycle"):
        await ctx.add_children(root.children[0].id, [FlowJob("job", key="root")])
    other = await ctx.enqueue("job")
    with pytest.raises(evq.FlowError, match="no other parent"):
        await ctx.add_children(other, [FlowJob("job", key="child")])
    assert await count_events(ctx) == before + 1  # only the plain enqueue


async def test_the_same_tree_twice_with_keys_is_added_once(ctx):
    ctx.define("sync", lambda p: None)
    ctx.define("step", lambda p: None)

    def tree() -> FlowJob:
        return FlowJob("sync", "ann", key="sync:ann", children=[
            FlowJob("step", 1, key="step1:ann"), FlowJob("step", 2, key="step2:ann")])

    first = await ctx.enqueue_flow(tree())
    before = await count_events(ctx)
    again = await ctx.enqueue_flow(tree())
    assert again.id == first.id and not again.added
    assert await count_events(ctx) == before
    assert len(await ctx.jobs()) == 3


async def test_cancelling_a_parent_cancels_its_descendants(ctx, clock):
    started = asyncio.Event()

    @ctx.job(queue="slow")
    async def busy(p: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    ctx.define("parent", lambda p: None)
    ctx.define("leaf", lambda p: None, queue="later")
    root = await ctx.enqueue_flow(FlowJob("parent", children=[
        FlowJob("parent", children=[FlowJob("leaf"), FlowJob("leaf")]), FlowJob("busy")]))
    worker = ctx.worker(queues=["slow"])
    task = asyncio.create_task(worker.run(until_idle=True))
    await started.wait()
    await ctx.cancel(root.id, reason="user gave up")
    await task  # the running child's handler was stopped
    tree = await ctx.flow(root.id)
    assert [n.state for n in tree.walk()] == ["cancelled"] * 5
    cancels = [e for e in await ctx.events(limit=1000) if e.kind == "cancel"]
    assert cancels[0].job_id == root.id and cancels[0].data["reason"] == "user gave up"
    assert {e.data["reason"] for e in cancels[1:]} == {"parent_cancelled"}
    assert {e.data["parent"] for e in cancels[1:]} == {root.id, root.children[0].id}
    await settle(ctx)
    assert replay.check(ctx.path).ok


async def test_deleting_a_parent_cancels_its_descendants(ctx):
    ctx.define("parent", lambda p: None)
    ctx.define("leaf", lambda p: None, queue="later")
    root = await ctx.enqueue_flow(FlowJob("parent", children=[FlowJob("leaf")]))
    await ctx.delete(root.id)
    assert await ctx.get_job(root.id) is None
    leaf = await ctx.get_job(root.children[0].id)
    assert leaf.state is evq.JobState.CANCELLED
    assert (await ctx.history(leaf.id))[-1].data == {"reason": "parent_deleted",
                                                      "parent": root.id}


async def test_a_cancelled_child_counts_as_failed_for_its_parent(ctx):
    ctx.define("parent", lambda p: None)
    ctx.define("leaf", lambda p: None, queue="later")
    root = await ctx.enqueue_flow(FlowJob("parent", children=[FlowJob("leaf")]))
    await ctx.cancel(root.children[0].id, reason="not needed")
    parent = await ctx.get_job(root.id)
    assert parent.state is evq.JobState.WAITING and parent.blocked_by == root.children[0].id
    last = (await ctx.history(root.id))[-1]
    assert last.kind == "child" and last.data["error"]["type"] == "Cancelled"


async def test_a_parent_keeps_its_own_delay(ctx, clock):
    ctx.define("parent", lambda p: "ran")
    ctx.define("leaf", lambda p: None)
    start = clock.now()
    root = await ctx.enqueue_flow(FlowJob("parent", delay=100, children=[FlowJob("leaf")]))
    await ctx.drain()
    parent = await ctx.get_job(root.id)
    assert parent.state is evq.JobState.PENDING
    assert parent.run_at.timestamp() == start + 100
    clock.advance(100)
    await ctx.drain()
    assert (await ctx.get_job(root.id)).result == "ran"


async def test_wait_for_returns_once_the_job_has_ended(ctx):
    ctx.define("parent", lambda p, job: job.child_result("leaf") + 1)
    ctx.define("leaf", lambda p: 41)
    root = await ctx.enqueue_flow(FlowJob("parent", children=[FlowJob("leaf")]))
    with pytest.raises(TimeoutError):
        await ctx.wait_for(root.id, timeout=0)
    worker = ctx.worker()
    serving = asyncio.create_task(worker.run())
    done = await ctx.wait_for(root.id)
    worker.stop()
    await serving
    assert done.state is evq.JobState.SUCCEEDED and done.result == 42
    assert (await ctx.wait_for(root.id)).result == 42  # already ended: at once
    with pytest.raises(evq.UnknownJob):
        await ctx.wait_for("f" * 32)


async def test_a_child_is_archived_only_with_its_parent(tmp_path):
    db = tmp_path / "ledger.db"
    clock = evq.FakeClock()
    async with evq.Context(db, clock=clock) as ctx:
        ctx.define("parent", lambda p: None)
        ctx.define("leaf", lambda p: None)
        root = await ctx.enqueue_flow(FlowJob("parent", children=[FlowJob("leaf")]))
        await ctx.drain()
        leaf = root.children[0].id
        await ctx.delete(leaf)  # the child goes; its parent stays
        clock.advance(10)
    first = archive(db, clock.now(), tmp_path / "a1.jsonl.gz", now=clock.now())
    assert first.jobs == 0  # the parent's `wait` still needs the child's enqueue
    assert replay.check(db).ok
    async with evq.Context(db, clock=clock) as ctx:
        await ctx.delete(root.id)
        assert (await ctx.history(root.id))[-1].kind == "delete"
        clock.advance(10)
    second = archive(db, clock.now(), tmp_path / "a2.jsonl.gz", now=clock.now())
    assert second.jobs == 2
    check = replay.check(db)
    assert check.ok, (check.only_stored, check.only_rebuilt, check.refusal)


async def test_a_sync_producer_adds_a_flow_with_the_same_events(ctx):
    ctx.define("parent", lambda p, job: job.child_result("leaf"))
    ctx.define("leaf", lambda p: "from sync")
    with ctx.sync() as producer:
        root = producer.enqueue_flow(FlowJob("parent", children=[FlowJob("leaf")]))
    await ctx.drain()
    assert (await ctx.get_job(root.id)).result == "from sync"
    assert await kinds_of(ctx, root.id) == [
        "enqueue", "wait", "child", "ready", "dequeue", "run", "success"]


async def test_bad_trees_are_typed_errors_and_write_nothing(ctx):
    ctx.define("job", lambda p: None)
    before = await count_events(ctx)
    with pytest.raises(evq.FlowError, match="two jobs of one flow"):
        # the same key twice would make the root its own grandchild
        await ctx.enqueue_flow(FlowJob("job", key="K", children=[
            FlowJob("job", children=[FlowJob("job", key="K")])]))
    with pytest.raises(evq.InvalidInput, match=r"flow\.children\[0\]: children must be a list"):
        await ctx.enqueue_flow(FlowJob("job", children=[
            FlowJob("job", children=FlowJob("job"))]))  # type: ignore[arg-type]
    parent = await ctx.enqueue("job")
    with pytest.raises(evq.InvalidInput, match="at least one child"):
        await ctx.add_children(parent, [])
    with pytest.raises(evq.InvalidInput, match="must be a list of FlowJob"):
        await ctx.add_children(parent, FlowJob("job"))  # type: ignore[arg-type]
    with pytest.raises(evq.InvalidInput, match="timeout"):
        await ctx.wait_for(parent, timeout=-1)
    assert await count_events(ctx) == before + 1  # the plain enqueue only
    assert (await ctx.get_job(parent)).state is evq.JobState.PENDING


async def test_adding_the_same_keyed_child_again_is_a_no_op(ctx):
    ctx.define("job", lambda p: None)
    parent = await ctx.enqueue("job")
    [first] = await ctx.add_children(parent, [FlowJob("job", key="child")])
    before = await count_events(ctx)
    [again] = await ctx.add_children(parent, [FlowJob("job", key="child")])
    assert again.id == first.id and not again.added
    assert await count_events(ctx) == before
    assert (await ctx.get_job(parent)).children == 1


async def test_children_are_not_added_to_a_job_that_already_ran(ctx, clock):
    ctx.define("job", lambda p: 1 / 0, max_attempts=3, backoff=evq.Fixed(60))
    parent = await ctx.enqueue("job")
    await ctx.drain()
    assert (await ctx.get_job(parent)).state is evq.JobState.PENDING  # waiting to retry
    with pytest.raises(evq.JobStateConflict, match="after 1 attempt"):
        await ctx.add_children(parent, [FlowJob("job")])


async def test_deleting_a_child_removes_it_from_its_parents_dependencies(ctx):
    ctx.define("parent", lambda p, job: [c.state for c in job.children])
    ctx.define("pending_leaf", lambda p: None, queue="later")
    ctx.define("bad", lambda p: 1 / 0, max_attempts=1)
    root = await ctx.enqueue_flow(FlowJob("parent", children=[
        FlowJob("pending_leaf"), FlowJob("bad")]))
    pending_id, bad_id = (c.id for c in root.children)
    await ctx.drain(queues=["default"])
    assert (await ctx.get_job(root.id)).blocked_by == bad_id
    await ctx.delete(pending_id)  # not run yet: dropped
    await ctx.delete(bad_id)  # failed and blocking: dropped too, by a person's choice
    await ctx.drain(queues=["default"])
    parent = await ctx.get_job(root.id)
    assert parent.state is evq.JobState.SUCCEEDED and parent.result == ["removed", "removed"]
    assert replay.check(ctx.path).ok


async def test_cleanup_keeps_a_failed_child_its_parent_waits_on(ctx, clock):
    ctx.define("parent", lambda p: None)
    ctx.define("bad", lambda p: 1 / 0, max_attempts=1)
    ctx.define("fine", lambda p: None)
    root = await ctx.enqueue_flow(FlowJob("parent", children=[FlowJob("bad")]))
    other = await ctx.enqueue("fine")
    await ctx.drain()
    clock.advance(3600)
    rules = [("default", ["succeeded", "expired"], 60.0)]
    removed = await ctx.ledger.writer.run(lambda tx: maintenance.cleanup(tx, rules, 100))
    assert removed == 1 and await ctx.get_job(other) is None
    assert (await ctx.get_job(root.children[0].id)).state is evq.JobState.EXPIRED
    await ctx.retry(root.children[0].id)  # still there to be retried


async def test_a_parent_is_not_retried_without_its_children(ctx):
    ctx.define("parent", lambda p: 1 / 0, max_attempts=1)
    ctx.define("leaf", lambda p: "ok")
    root = await ctx.enqueue_flow(FlowJob("parent", children=[FlowJob("leaf")]))
    await ctx.drain()
    assert (await ctx.get_job(root.id)).state is evq.JobState.EXPIRED
    with pytest.raises(evq.JobStateConflict, match="enqueue the flow again"):
        await ctx.retry(root.id)


async def test_a_sync_producer_adds_children_too(ctx):
    ctx.define("parent", lambda p, job: sorted(job.children_values.values()))
    ctx.define("leaf", lambda p: p)
    with ctx.sync() as producer:
        parent = producer.enqueue("parent")
        [added] = producer.add_children(parent, [FlowJob("leaf", 7)])
        with pytest.raises(evq.InvalidInput, match="at least one child"):
            producer.add_children(parent, [])
    assert added.added
    await ctx.drain()
    assert (await ctx.get_job(parent)).result == [7]
