"""Flows: a tree committed whole or not at all; a parent waits for its children, runs
once they all succeed (with their results), and a child's failure does to it what the
child's policy says (wait, fail the parent, ignore, remove); cancel and delete take a
parent's live descendants along."""

from __future__ import annotations

import pytest
from ledger_kit import claim, failure, job_kinds, node, request, state, success

import evq
from evq.ledger import Ledger, records


async def run_all(ledger: Ledger, worker: str = "w1") -> list[str]:
    """Claim every due job and let each succeed with its own id as result."""
    done = []
    for attempt in await claim(ledger, worker, limit=100):
        await ledger.report(attempt, success(attempt.job_id))
        done.append(attempt.job_id)
    return done


async def test_a_tree_is_added_whole_and_the_parent_waits(ledger: Ledger,
                                                          clock: evq.FakeClock) -> None:
    a, b = node(clock), node(clock)
    root = node(clock, "wait", a, b, name="report")
    placed = await ledger.enqueue_tree(root)
    assert placed == records.FlowNode(root.job.id, "report", "q", True, (
        records.FlowNode(a.job.id, "n", "q", True), records.FlowNode(b.job.id, "n", "q", True)))
    parent = await ledger.get_job(root.job.id)
    assert parent is not None and (parent.state, parent.children) == (
        evq.JobState.WAITING, 2)
    for child in (a, b):
        record = await ledger.get_job(child.job.id)
        assert record is not None
        assert (record.state, record.parent_id) == (evq.JobState.PENDING, root.job.id)
    taken = await claim(ledger, names=["n", "report"], limit=10)
    assert sorted(t.job_id for t in taken) == sorted([a.job.id, b.job.id])


async def test_a_parent_runs_with_its_childrens_results_once_all_succeed(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    a, b = node(clock), node(clock)
    root = node(clock, "wait", a, b, name="report")
    await ledger.enqueue_tree(root)
    attempts = {t.job_id: t for t in await claim(ledger)}
    await ledger.report(attempts[a.job.id], success("from a"))
    assert await state(ledger, root.job.id) == "waiting"
    await ledger.report(attempts[b.job.id], success("from b"))
    assert await state(ledger, root.job.id) == "pending"
    assert "ready" in await job_kinds(ledger, root.job.id)
    [parent] = (await ledger.claim(request(names=["report"]))).claimed
    assert parent.id == root.job.id
    assert {(c.id, c.state, c.result) for c in parent.children} == {
        (a.job.id, "succeeded", "from a"), (b.job.id, "succeeded", "from b")}


async def test_a_child_that_fails_the_parent_cancels_its_unstarted_siblings(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    bad, running, unstarted = node(clock, "fail_parent"), node(clock), node(clock)
    root = node(clock, "wait", bad, running, unstarted, name="report")
    await ledger.enqueue_tree(root)
    attempts = {t.job_id: t for t in await claim(ledger, limit=2)}
    assert set(attempts) == {bad.job.id, running.job.id}
    await ledger.report(attempts[bad.job.id], failure(0, 1))
    assert await state(ledger, root.job.id) == "failed"
    assert await state(ledger, unstarted.job.id) == "cancelled"
    assert await state(ledger, running.job.id) == "running"  # a started one runs on
    await ledger.report(attempts[running.job.id], success())
    assert await state(ledger, root.job.id) == "failed"


async def test_a_parent_that_keeps_its_children_lets_them_run_on(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    bad, sibling = node(clock, "fail_parent"), node(clock)
    root = node(clock, "wait", bad, sibling, name="report", keep_children=True)
    await ledger.enqueue_tree(root)
    [first] = await claim(ledger, limit=1)
    assert first.job_id == bad.job.id
    await ledger.report(first, failure(0, 1))
    assert await state(ledger, root.job.id) == "failed"
    assert await state(ledger, sibling.job.id) == "pending"


async def test_a_waited_for_child_that_failed_blocks_its_parent_until_retried(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    bad = node(clock, "wait")
    root = node(clock, "wait", bad, name="report")
    await ledger.enqueue_tree(root)
    [attempt] = await claim(ledger)
    await ledger.report(attempt, failure(0, 1))
    parent = await ledger.get_job(root.job.id)
    assert parent is not None
    assert (parent.state, parent.blocked_by) == (evq.JobState.WAITING, bad.job.id)
    await ledger.retry(bad.job.id, "retried-child", None)
    parent = await ledger.get_job(root.job.id)
    assert parent is not None and parent.blocked_by is None
    assert await run_all(ledger) == ["retried-child"]
    [claimed] = (await ledger.claim(request(names=["report"]))).claimed
    assert {(c.id, c.state) for c in claimed.children} == {
        (bad.job.id, "replaced"), ("retried-child", "succeeded")}


@pytest.mark.parametrize(("policy", "edge"), [("ignore", "ignored"), ("remove", "removed")])
async def test_a_child_whose_failure_does_not_count_lets_the_parent_run(
        ledger: Ledger, clock: evq.FakeClock, policy: str, edge: str) -> None:
    bad, good = node(clock, policy), node(clock)
    root = node(clock, "wait", bad, good, name="report")
    await ledger.enqueue_tree(root)
    attempts = {t.job_id: t for t in await claim(ledger)}
    await ledger.report(attempts[bad.job.id], failure(0, 1))
    await ledger.report(attempts[good.job.id], success())
    [claimed] = (await ledger.claim(request(names=["report"]))).claimed
    assert claimed.id == root.job.id
    assert {c.id: c.state for c in claimed.children} == {bad.job.id: edge, good.job.id: "succeeded"}


async def test_cancel_and_delete_take_a_parents_live_descendants(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    leaf, done = node(clock), node(clock)
    middle = node(clock, "wait", leaf, name="middle")
    root = node(clock, "wait", middle, done, name="report")
    await ledger.enqueue_tree(root)
    attempts = {t.job_id: t for t in await claim(ledger)}
    await ledger.report(attempts[done.job.id], success())
    stopped = await ledger.cancel(root.job.id, "not needed")
    assert stopped[0] == records.Stopped(root.job.id, False)
    assert {s.job_id: s.was_running for s in stopped[1:]} == {
        middle.job.id: False, leaf.job.id: True}
    for job in (root, middle, leaf):
        assert await state(ledger, job.job.id) == "cancelled"
    assert await state(ledger, done.job.id) == "succeeded"

    other_leaf = node(clock)
    other = node(clock, "wait", other_leaf, name="report")
    await ledger.enqueue_tree(other)
    stopped = await ledger.delete(other.job.id, "cleanup")
    assert stopped == [records.Stopped(other_leaf.job.id, False)]
    assert await ledger.get_job(other.job.id) is None
    assert await state(ledger, other_leaf.job.id) == "cancelled"


async def test_children_join_a_parent_that_has_not_started_only(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    parent = node(clock, name="report")
    await ledger.enqueue_tree(parent)
    late = node(clock, "wait")
    placed = await ledger.add_children(parent.job.id, [late])
    assert [p.id for p in placed] == [late.job.id]
    assert await state(ledger, parent.job.id) == "waiting"
    await run_all(ledger)
    [attempt] = await claim(ledger, names=["report"])
    head = await ledger.head()
    with pytest.raises(evq.JobStateConflict, match=parent.job.id):
        await ledger.add_children(parent.job.id, [node(clock)])
    assert await ledger.head() == head
    await ledger.report(attempt, success())


async def test_a_tree_that_cannot_be_added_adds_nothing(ledger: Ledger,
                                                        clock: evq.FakeClock) -> None:
    existing = node(clock)
    await ledger.enqueue_tree(existing)
    head, jobs = await ledger.head(), await ledger.jobs()
    clash = records.PlannedNode(existing.job, "wait")  # a job id the ledger already has
    with pytest.raises(evq.EvqError):
        await ledger.enqueue_tree(node(clock, "wait", node(clock), clash, name="report"))
    assert (await ledger.head(), await ledger.jobs()) == (head, jobs)


async def test_a_node_whose_key_names_a_live_job_is_that_job(ledger: Ledger,
                                                             clock: evq.FakeClock) -> None:
    shared = node(clock, key="shared")
    await ledger.enqueue_tree(shared)
    again = node(clock, "wait", key="shared")
    root = node(clock, "wait", again, name="report")
    placed = await ledger.enqueue_tree(root)
    assert placed.children == (records.FlowNode(shared.job.id, "n", "q", False),)
    assert await ledger.get_job(again.job.id) is None
    assert await run_all(ledger) == [shared.job.id]
    assert await state(ledger, root.job.id) == "pending"
