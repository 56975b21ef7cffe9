"""Durable cursors: one holder per name, fenced by its token; a position that never goes
back; a lease that passes the name on when it runs out; a cursor moved inside the user's
own transaction, with their writes, or not at all."""

from __future__ import annotations

import asyncio

import pytest
from ledger_kit import CallerConnection, new_job, node, state

import evq
from evq.ledger import Ledger, records


async def position_of(ledger: Ledger, name: str) -> int:
    [found] = [s for s in ledger.cursor_states() if s.name == name]
    return found.position


async def test_a_fresh_cursor_is_taken_at_its_start_by_one_holder(
        ledger: Ledger, other: Ledger, clock: evq.FakeClock) -> None:
    assert await ledger.cursor_lease("mailer") is None
    assert await ledger.take_cursor("mailer", "t1", None, 30.0, start=0) == 0
    assert await ledger.cursor_lease("mailer") == records.CursorLease("t1", clock.now() + 30.0)
    assert await other.take_cursor("mailer", "t2", None, 30.0, start=0) is None
    assert await ledger.take_cursor("audit", "t3", None, 30.0, start=7) == 7  # another name
    await ledger.enqueue([new_job(clock)])
    head = await ledger.head()
    states = {s.name: s for s in ledger.cursor_states()}
    assert {name: (s.position, s.head, s.holder, s.lag) for name, s in states.items()} == {
        "mailer": (0, head, "t1", head), "audit": (7, head, "t3", max(0, head - 7))}


async def test_a_moved_cursor_keeps_its_holder_and_never_goes_back(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    await ledger.take_cursor("mailer", "t1", None, 30.0, start=0)
    clock.advance(20)
    assert await ledger.move_cursor("mailer", "t1", 5, 30.0)
    assert await ledger.cursor_lease("mailer") == records.CursorLease("t1", clock.now() + 30.0)
    assert await ledger.move_cursor("mailer", "t1", 3, 30.0)
    assert await position_of(ledger, "mailer") == 5
    assert not await ledger.move_cursor("mailer", "stranger", 9, 30.0)
    assert await position_of(ledger, "mailer") == 5


async def test_a_lease_that_ran_out_passes_the_name_and_fences_the_old_holder(
        ledger: Ledger, other: Ledger, clock: evq.FakeClock) -> None:
    await ledger.take_cursor("mailer", "t1", None, 30.0, start=0)
    await ledger.move_cursor("mailer", "t1", 4, 30.0)
    clock.advance(29)
    assert await other.take_cursor("mailer", "t2", None, 30.0, start=0) is None
    clock.advance(1)
    assert await other.take_cursor("mailer", "t2", None, 30.0, start=0) == 4
    assert not await ledger.move_cursor("mailer", "t1", 8, 30.0)
    await ledger.release_cursor("mailer", "t1", 8)  # no longer its to release
    assert await ledger.cursor_lease("mailer") == records.CursorLease("t2", clock.now() + 30.0)
    assert await position_of(ledger, "mailer") == 4


async def test_a_holder_retakes_its_name_under_a_new_token(ledger: Ledger) -> None:
    await ledger.take_cursor("mailer", "t1", None, 30.0, start=0)
    await ledger.move_cursor("mailer", "t1", 6, 30.0)
    assert await ledger.take_cursor("mailer", "t2", "t1", 30.0, start=0) == 6
    assert not await ledger.move_cursor("mailer", "t1", 7, 30.0)
    assert await ledger.take_cursor("mailer", "t3", "t1", 30.0, start=0) is None


async def test_a_released_name_is_free_at_once_at_its_position(
        ledger: Ledger, other: Ledger, clock: evq.FakeClock) -> None:
    await ledger.take_cursor("mailer", "t1", None, 30.0, start=0)
    await ledger.release_cursor("mailer", "t1", 9)
    lease = await ledger.cursor_lease("mailer")
    assert lease is not None and lease.holder is None
    assert await other.take_cursor("mailer", "t2", None, 30.0, start=0) == 9


async def test_a_cursor_moves_with_the_users_own_writes(
        ledger: Ledger, caller: CallerConnection, clock: evq.FakeClock) -> None:
    await ledger.take_cursor("mailer", "t1", None, 30.0, start=0)
    job = new_job(clock)
    caller.begin()
    ledger.check_callers_transaction(caller.conn)
    ledger.enqueue_in(caller.conn, job, {}, clock.now)
    ledger.advance_cursor_in(caller.conn, "mailer", "t1", 3, clock.now())
    assert await ledger.get_job(job.id) is None  # not before the user commits
    caller.commit()
    assert await ledger.get_job(job.id) is not None
    assert await position_of(ledger, "mailer") == 3


@pytest.mark.parametrize("why", ["stranger", "backwards"])
async def test_a_fenced_cursor_move_rolls_the_users_writes_back(
        ledger: Ledger, caller: CallerConnection, clock: evq.FakeClock, why: str) -> None:
    await ledger.take_cursor("mailer", "t1", None, 30.0, start=0)
    await ledger.move_cursor("mailer", "t1", 5, 30.0)
    head = await ledger.head()
    job = new_job(clock)
    caller.begin()
    ledger.enqueue_in(caller.conn, job, {}, clock.now)
    holder, position = ("t9", 8) if why == "stranger" else ("t1", 5)
    with pytest.raises(evq.CursorLost, match="mailer"):
        ledger.advance_cursor_in(caller.conn, "mailer", holder, position, clock.now())
    assert not caller.in_transaction
    assert await ledger.get_job(job.id) is None and await ledger.head() == head
    assert await position_of(ledger, "mailer") == 5


async def test_enqueue_in_commits_or_rolls_back_with_the_user(
        ledger: Ledger, caller: CallerConnection, clock: evq.FakeClock) -> None:
    kept, dropped, refused = new_job(clock), new_job(clock), new_job(clock)
    caller.begin()
    ledger.enqueue_in(caller.conn, dropped, {}, clock.now)
    caller.rollback()
    caller.begin()
    ledger.enqueue_in(caller.conn, kept, {}, clock.now)
    ledger.enqueue_in(caller.conn, refused, {refused.id: "over quota"}, clock.now)
    caller.commit()
    assert [j.id for j in await ledger.jobs()] == [kept.id]
    assert await ledger.history(dropped.id) == []
    assert [(e.kind, e.data["reason"]) for e in await ledger.history(refused.id)] == [
        ("reject", "over quota")]
    assert (await ledger.events(0, 100, True))[-1].kind == "seal"


async def test_a_users_connection_must_be_one_in_a_transaction(
        ledger: Ledger, caller: CallerConnection) -> None:
    with pytest.raises(evq.InvalidInput):
        ledger.check_callers_transaction(object())
    with pytest.raises(evq.InvalidInput, match="transaction"):
        ledger.check_callers_transaction(caller.conn)


async def test_commits_of_other_handles_are_noticed(ledger: Ledger, other: Ledger,
                                                    clock: evq.FakeClock) -> None:
    changed = asyncio.Event()
    stop = ledger.watch_commits(0.01, changed.set)
    try:
        await other.enqueue([new_job(clock)])
        await asyncio.wait_for(changed.wait(), 10)
    finally:
        await stop()


async def test_a_producer_session_writes_without_the_runtime(ledger: Ledger,
                                                             clock: evq.FakeClock) -> None:
    producer = ledger.producer(clock)
    single, many = new_job(clock), [new_job(clock), new_job(clock)]
    try:
        assert producer.enqueue([single]) == [single.id]
        assert producer.enqueue(many) == [j.id for j in many]
        with pytest.raises(evq.EvqError):
            producer.enqueue([new_job(clock), new_job(clock, id=single.id)])
        rejected = new_job(clock)
        producer.reject([rejected], {rejected.id: "no"})
        child, parent = node(clock), node(clock, "wait", name="report")
        assert producer.enqueue_tree(parent).id == parent.job.id
        assert [n.id for n in producer.add_children(parent.job.id, [child])] == [child.job.id]
    finally:
        producer.close()
    with pytest.raises(evq.ContextClosed):
        producer.enqueue([new_job(clock)])
    assert sorted(j.id for j in await ledger.jobs()) == sorted(
        [j.id for j in [single, *many]] + [parent.job.id, child.job.id])
    assert await state(ledger, parent.job.id) == "waiting"
    assert [e.kind for e in await ledger.history(rejected.id)] == ["reject"]
    events = await ledger.events(0, 100, True)
    positions = [e.position for e in events]
    assert positions == sorted(set(positions)) and events[-1].kind == "seal"
