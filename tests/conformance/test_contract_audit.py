"""The audit side: a sound ledger verifies (storage, append-only rules, hash chain,
replay equals projection); export then import, and replay into a new ledger, give the
same events, the same state and the same head hash; archive moves deleted jobs' events
out and the chain still verifies, checked against the archive file when it is given."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Generator
from pathlib import Path

import pytest
from ledger_kit import (
    EngineKit,
    MemoryArchive,
    all_events,
    claim,
    failure,
    head_of,
    new_job,
    node,
    sound,
    success,
)

import evq
from evq.ledger import Ledger, audit_records, records


async def some_history(ledger: Ledger, clock: evq.FakeClock) -> dict[str, str]:
    """Jobs in every state, a flow, and two deleted jobs (their ids by what they are)."""
    jobs = {name: new_job(clock, payload={"name": name}, key="k" if name == "keyed" else None)
            for name in ("done", "failed", "cancelled", "pending", "running", "gone",
                         "gone-too", "keyed")}
    await ledger.enqueue(list(jobs.values()))
    tree = node(clock, "wait", node(clock), node(clock, "ignore"), name="report")
    await ledger.enqueue_tree(tree)
    await ledger.cancel(jobs["cancelled"].id, "test")
    attempts = {a.job_id: a for a in await claim(ledger, names=["n"], limit=100)}
    clock.advance(5)
    await ledger.report(attempts[jobs["done"].id], success({"ok": 1}))
    await ledger.report(attempts[jobs["failed"].id], failure(0, 3, retryable=False))
    for name in ("gone", "gone-too", "pending", "keyed"):
        await ledger.report(attempts[jobs[name].id], success() if name.startswith("gone")
                            else failure(0, 3))
    for child in tree.children:
        await ledger.report(attempts[child.job.id], success(child.job.id))
    clock.advance(5)
    await ledger.delete(jobs["gone"].id, "cleanup")
    await ledger.delete(jobs["gone-too"].id, "cleanup")
    clock.advance(5)
    return {name: job.id for name, job in jobs.items()} | {"flow": tree.job.id}


def fresh(engine: EngineKit, tmp_path: Path, name: str) -> Ledger:
    """A handle on a new, empty place for a ledger."""
    (tmp_path / name).mkdir()
    return engine.handle(engine.place(tmp_path / name))


async def test_a_sound_ledger_verifies(ledger: Ledger, clock: evq.FakeClock) -> None:
    await some_history(ledger, clock)
    events = await all_events(ledger)
    check = ledger.verify()
    sound(check)
    assert check.chain is not None
    seals = [e for e in events if e.kind == "seal"]
    assert (check.chain.events, check.chain.seals) == (len(events), len(seals))
    assert check.chain.head == seals[-1].data["hash"] and events[-1].kind == "seal"
    assert check.replay is not None and check.replay.events == len(events)
    replay = ledger.check_replay()
    assert replay.ok and replay.events == len(events)


async def test_an_earlier_head_still_verifies_and_a_stranger_does_not(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    await ledger.enqueue([new_job(clock)])
    earlier = head_of(ledger.verify())
    await some_history(ledger, clock)
    sound(ledger.verify(expect_head=earlier))
    assert head_of(ledger.verify()) != earlier
    stranger = hashlib.sha256(b"another ledger").hexdigest()
    check = ledger.verify(expect_head=stranger)
    assert check.chain is not None and not check.chain.ok
    assert check.chain.problem is not None and stranger in check.chain.problem
    assert check.chain.position is None


async def test_export_then_import_gives_the_same_ledger(
        engine: EngineKit, tmp_path: Path, ledger: Ledger, clock: evq.FakeClock) -> None:
    await some_history(ledger, clock)
    copy = fresh(engine, tmp_path, "imported")
    exported = list(ledger.export())
    assert copy.import_(exported) == len(exported) == len(await all_events(ledger))
    source, imported = ledger.verify(), copy.verify()
    sound(imported)
    assert head_of(imported) == head_of(source)
    assert list(copy.read_events()) == list(ledger.read_events())
    assert copy.find_jobs(audit_records.JobFilter()) == ledger.find_jobs(audit_records.JobFilter())
    assert list(copy.export()) == exported


async def test_an_import_refused_leaves_nothing(engine: EngineKit, tmp_path: Path,
                                                ledger: Ledger, clock: evq.FakeClock) -> None:
    await some_history(ledger, clock)
    exported = list(ledger.export())
    success_at = next(i for i, e in enumerate(exported) if e.event.kind == "success")
    broken = exported[:success_at] + exported[success_at + 2:]  # a success and its seal lost
    copy = fresh(engine, tmp_path, "imported")
    with pytest.raises(evq.EvqError):
        copy.import_(broken)
    with pytest.raises(evq.LedgerNotFound):
        copy.check_schema()
    assert copy.import_(exported) == len(exported)  # the place is still free


async def test_replay_into_a_new_ledger_gives_the_same_state_and_head(
        engine: EngineKit, tmp_path: Path, ledger: Ledger, clock: evq.FakeClock) -> None:
    ids = await some_history(ledger, clock)
    replayed = fresh(engine, tmp_path, "replayed")
    count = ledger.replay_into(replayed)
    assert count == len(await all_events(ledger))
    sound(replayed.verify())
    assert head_of(replayed.verify()) == head_of(ledger.verify())
    everything = audit_records.JobFilter()
    assert replayed.find_jobs(everything) == ledger.find_jobs(everything)
    # Up to a position: the ledger as it stood then.
    enqueued = next(e.position for e in await ledger.history(ids["done"]) if e.kind == "enqueue")
    then = fresh(engine, tmp_path, "then")
    ledger.replay_into(then, upto=enqueued + 1)  # the enqueue's commit and its seal
    record = then.read_job(ids["done"])
    assert record is not None and record.state is evq.JobState.PENDING
    assert then.read_job(ids["flow"]) is None and then.last_position() == enqueued + 1


async def test_the_ledger_as_it_stood_at_any_time_even_with_archived_holes(
        engine: EngineKit, tmp_path: Path, ledger: Ledger, clock: evq.FakeClock) -> None:
    ids = await some_history(ledger, clock)
    ledger.archive(MemoryArchive().request(clock.now(), clock.now()))  # holes in the middle
    for step in range(6):
        clock.advance(1 + step)
        await ledger.enqueue([new_job(clock)])
    events = list(ledger.read_events())
    held = {e.position for e in events}
    assert len(held) < events[-1].position  # the archived jobs left holes
    times = sorted({e.timestamp for e in events})
    moments = [times[0] - 1, *times, *((a + b) / 2 for a, b in itertools.pairwise(times)),
               times[-1] + 1]
    for moment in moments:
        after = [e.position for e in events if e.timestamp > moment]
        expected = after[0] - 1 if after else events[-1].position
        assert ledger.last_position(at=moment) == expected, moment
    # Replayed up to a time: exactly the events stamped by then.
    moment = times[len(times) // 2]
    then = fresh(engine, tmp_path, "then")
    count = ledger.replay_into(then, upto_at=moment)
    kept = [e for e in events if e.timestamp <= moment]
    assert count == len(kept) and then.last_position() == kept[-1].position
    assert [e.position for e in then.read_events()] == [e.position for e in kept]
    assert then.read_job(ids["done"]) is not None


async def test_a_replay_up_to_a_time_cuts_at_an_archived_event_too(
        engine: EngineKit, tmp_path: Path, ledger: Ledger, clock: evq.FakeClock) -> None:
    start = clock.now()
    await ledger.enqueue([new_job(clock)])  # positions 1-2 (with its seal), kept
    clock.advance(10)
    gone = new_job(clock)
    await ledger.enqueue([gone])  # 3-4: its enqueue is archived, its seal stays
    clock.advance(10)
    await ledger.delete(gone.id, "cleanup")
    archive = MemoryArchive()
    ledger.archive(archive.request(clock.now(), clock.now()))
    assert 3 in archive.rows and 4 not in archive.rows
    then = fresh(engine, tmp_path, "then")
    count = ledger.replay_into(then, upto_at=start + 5, archived=archive.rows)
    assert count == 2 and [e.position for e in then.read_events()] == [1, 2]


async def test_archive_moves_deleted_jobs_out_and_the_chain_still_verifies(
        engine: EngineKit, tmp_path: Path, ledger: Ledger, clock: evq.FakeClock) -> None:
    ids = await some_history(ledger, clock)
    head = head_of(ledger.verify())
    gone = [ids["gone"], ids["gone-too"]]
    moving = [e.position for job in gone for e in await ledger.history(job)]
    archive = MemoryArchive()
    moved = ledger.archive(archive.request(clock.now(), clock.now()))
    assert (moved.events, moved.jobs, moved.sha256) == (len(moving), 2, archive.sha256)
    assert sorted(archive.rows) == sorted(moving)
    for job in gone:
        assert ledger.job_history(job) == []
    last = list(ledger.read_events())[-2:]
    assert [e.kind for e in last] == ["archive", "seal"]
    assert last[0].data["sha256"] == archive.sha256 and last[0].data["events"] == len(moving)
    # Without the file the moved events cannot be checked; with it, all is checked.
    plain = ledger.verify(expect_head=head)
    sound(plain, complete=False)
    assert plain.chain is not None and plain.chain.unchecked_events == len(moving)
    sound(ledger.verify(expect_head=head, archives=[archive.file()]))
    # Nothing more to move: no event, no file.
    again = MemoryArchive()
    assert ledger.archive(again.request(clock.now(), clock.now())).events == 0
    assert again.rows == {} and list(ledger.read_events())[-1].position == last[-1].position
    # An archived ledger exports and imports to one that verifies just the same.
    copy = fresh(engine, tmp_path, "imported")
    copy.import_(ledger.export())
    assert head_of(copy.verify()) == head_of(ledger.verify())
    sound(copy.verify(archives=[archive.file()]))


async def test_the_operators_actions_need_no_runtime(engine: EngineKit, place: str,
                                                     ledger: Ledger,
                                                     clock: evq.FakeClock) -> None:
    ids = await some_history(ledger, clock)
    operator = engine.handle(place)  # never opened
    assert operator.retry_job(ids["failed"], "op-retry", "fixed") == "op-retry"
    assert operator.cancel_job(ids["pending"], "stop") == [records.Stopped(ids["pending"],
                                                                            False)]
    assert operator.delete_job(ids["done"], "tidy") == []
    assert await ledger.get_job("op-retry") is not None
    record = await ledger.get_job(ids["pending"])
    assert record is not None and record.state is evq.JobState.CANCELLED
    assert await ledger.get_job(ids["done"]) is None
    with pytest.raises(evq.JobStateConflict):
        operator.delete_job(ids["running"], None)
    sound(operator.verify())


async def test_the_readers_see_what_the_runtime_wrote(ledger: Ledger, clock: evq.FakeClock
                                                      ) -> None:
    ids = await some_history(ledger, clock)
    events = await all_events(ledger)
    ledger.check_schema()
    assert list(ledger.read_events()) == events
    assert list(ledger.read_events(events[3].position)) == events[4:]
    assert list(ledger.read_events_back(events[3].position)) == events[2::-1]
    assert ledger.last_position() == events[-1].position
    assert ledger.last_position(at=events[0].timestamp) == max(
        e.position for e in events if e.timestamp <= events[0].timestamp)
    assert ledger.job_history(ids["gone"]) == await ledger.history(ids["gone"])
    assert ledger.job_history(ids["gone"])[-1].kind == "delete"
    both = ledger.events_of_jobs([ids["done"], ids["failed"]])
    assert both == [e for e in events if e.job_id in (ids["done"], ids["failed"])]
    assert ledger.read_job(ids["done"]) == await ledger.get_job(ids["done"])
    assert ledger.read_job(ids["gone"]) is None
    assert ledger.find_job_ids(ids["gone"], 5) == [ids["gone"]]  # deleted, still named
    prefix = ids["done"][:-2]
    assert ids["done"] in ledger.find_job_ids(prefix, 50)
    labels = ledger.job_labels([ids["done"], ids["gone"]])
    assert labels[ids["done"]] == audit_records.JobLabel("n", "succeeded")
    assert labels[ids["gone"]].name == "n"
    failed = ledger.find_jobs(audit_records.JobFilter(state="failed"))
    assert [j.id for j in failed] == [ids["failed"]]
    everyone = await ledger.jobs()
    for live in ("pending", "running"):  # each read through its own index
        wanted = [j for j in everyone if j.state == live]
        assert wanted
        assert ledger.find_jobs(audit_records.JobFilter(state=live)) == wanted
        assert ledger.find_jobs(audit_records.JobFilter(state=live, limit=1)) == wanted[-1:]
        assert ledger.find_jobs(audit_records.JobFilter(state=live, queue="q")) == wanted
        assert ledger.find_jobs(audit_records.JobFilter(state=live, queue="elsewhere")) == []
    assert [j.id for j in ledger.find_jobs(audit_records.JobFilter(limit=2))] == [
        j.id for j in (await ledger.jobs())][-2:]
    tree = ledger.read_flow(ids["flow"])
    assert tree is not None and tree.id == ids["flow"] and tree.state == "pending"
    assert sorted(child.state for child in tree.children) == ["succeeded", "succeeded"]


async def test_a_page_of_jobs_is_what_filtering_every_job_gives(ledger: Ledger,
                                                               clock: evq.FakeClock) -> None:
    # The dashboard's list: every criterion, alone and together, and paging by position,
    # against the same filter done by hand over every job.
    await some_history(ledger, clock)
    extra = [new_job(clock, payload={"city": "Zürich <b>"}, queue="geo", name="geocode")
             for _ in range(3)]
    await ledger.enqueue(extra)
    clock.advance(10)
    later = new_job(clock, payload={"city": "Oslo"}, queue="geo", name="geocode")
    await ledger.enqueue([later])
    everyone = sorted(await ledger.jobs(), key=lambda j: -j.enqueue_position)
    payloads = {e.job_id: e.data for e in await all_events(ledger) if e.kind == "enqueue"}

    def page(**wanted: object) -> list[str]:
        return [j.id for j in ledger.job_page(audit_records.JobQuery(**wanted)).jobs]  # type: ignore[arg-type]

    assert page(limit=1000) == [j.id for j in everyone]
    assert page(limit=2) == [j.id for j in everyone[:2]]
    assert page(before=everyone[1].enqueue_position, limit=2) == [j.id for j in everyone[2:4]]
    assert page(state="failed") == [j.id for j in everyone if j.state == "failed"]
    assert page(queue="geo", name="geocode") == [later.id, *[j.id for j in extra][::-1]]
    assert page(queue="geo", name="other") == []
    at = {j.id: j.enqueued_at.timestamp() for j in everyone}
    assert page(since=at[later.id]) == [later.id]
    assert page(until=at[later.id] - 1, queue="geo") == [j.id for j in extra][::-1]
    assert page(text="Zürich <b>") == [j.id for j in extra][::-1]
    assert page(text="nothing like this") == []
    assert page(text="done") == [j.id for j in everyone if "done" in
                                 json.dumps(payloads[j.id])]
    for wanted in ({"limit": 1000}, {"state": "failed", "limit": 1000},
                   {"queue": "geo", "name": "geocode", "limit": 1000},
                   {"text": "Zürich <b>", "limit": 1000}, {"limit": 2},
                   {"since": at[later.id], "limit": 1000}):
        query = audit_records.JobQuery(**wanted)  # type: ignore[arg-type]
        assert ledger.count_jobs(query) == len(ledger.job_page(query).jobs), wanted
    # A bounded search looks at no more than `scan` jobs, and says where it stopped when
    # it stopped short: searching on from there finds the rest, the same jobs in order.
    geo = [later.id, *[j.id for j in extra][::-1]]
    assert page(queue="geo") == geo
    first = ledger.job_page(audit_records.JobQuery(queue="geo", scan=2))
    assert [j.id for j in first.jobs] == geo[:2]
    assert first.searched_to == everyone[1].enqueue_position
    assert ledger.job_page(audit_records.JobQuery(queue="geo", scan=2, limit=2)
                           ).searched_to is None  # a full page goes on from its last job
    found, before = [j.id for j in first.jobs], first.searched_to
    while before is not None:
        more = ledger.job_page(audit_records.JobQuery(queue="geo", scan=2, before=before))
        found += [j.id for j in more.jobs]
        before = more.searched_to
    assert found == geo
    assert ledger.job_page(audit_records.JobQuery(queue="geo", scan=1000)).searched_to is None
    assert ledger.job_page(audit_records.JobQuery(state="failed", scan=1)).searched_to is None
    # A bound as big as the page is still a bound; one that reaches the oldest job
    # exactly leaves nothing unexamined.
    first_geo = min(j.enqueue_position for j in everyone if j.queue == "geo")
    older = [j for j in everyone if j.enqueue_position < first_geo]
    assert older  # some_history's jobs came first
    short = ledger.job_page(audit_records.JobQuery(queue="geo", scan=2, limit=2,
                                                   before=first_geo + 1))
    assert [j.id for j in short.jobs] == geo[-1:]
    assert short.searched_to == older[0].enqueue_position
    tail = ledger.job_page(audit_records.JobQuery(queue="geo", scan=len(older), limit=5,
                                                  before=first_geo))
    assert (tail.jobs, tail.searched_to) == ([], None)
    cut = ledger.job_page(audit_records.JobQuery(queue="geo", scan=len(older) - 1,
                                                 limit=5, before=first_geo))
    assert (cut.jobs, cut.searched_to) == ([], older[-2].enqueue_position)
    for bad in ({"state": "done"}, {"queue": "geo", "scan": 0}):
        with pytest.raises(evq.InvalidInput):
            ledger.job_page(audit_records.JobQuery(**bad))  # type: ignore[arg-type]
    counts = ledger.job_counts()
    expected: dict[tuple[str, str], int] = {}
    for job in everyone:
        expected[(job.queue, job.state.value)] = expected.get(
            (job.queue, job.state.value), 0) + 1
    assert {(queue, state): n for queue, state, n in counts} == expected
    assert counts == sorted(counts)


async def test_follow_gives_every_event_then_those_committed_later(
        ledger: Ledger, other: Ledger, clock: evq.FakeClock) -> None:
    await some_history(ledger, clock)
    events = await all_events(ledger)
    following = ledger.follow(events[2].position, 0.01)
    try:
        assert [next(following) for _ in events[3:]] == events[3:]
        job = new_job(clock)
        await other.enqueue([job])  # another process commits
        assert (next(following).job_id, next(following).kind) == (job.id, "seal")
    finally:
        if isinstance(following, Generator):  # let go of its read now
            following.close()


def test_a_missing_ledger_is_refused_and_migrate_creates_it(engine: EngineKit,
                                                            place: str) -> None:
    handle = engine.handle(place)
    with pytest.raises(evq.LedgerNotFound):
        handle.check_schema()
    with pytest.raises(evq.LedgerNotFound):
        handle.verify()
    before, now = handle.migrate()
    assert before == 0 and now > 0
    assert handle.migrate() == (now, now)
    handle.check_schema()
    sound(handle.verify())
    assert handle.schema_text().strip() != ""


async def test_finished_jobs_over_time_and_the_backlog_are_what_the_jobs_say(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    # The dashboard's chart and backlog, against the same figures made by hand from
    # every job: finished per slot and state, and the pending jobs due now per queue.
    await some_history(ledger, clock)
    later = new_job(clock, queue="geo", delay=3600)  # scheduled: not due
    await ledger.enqueue([later, new_job(clock, queue="geo")])
    everyone = await ledger.jobs()
    finished = [j for j in everyone if j.finished_at is not None
                and j.state.value in ("succeeded", "failed", "expired", "cancelled")]
    assert finished
    start = min(j.finished_at.timestamp() for j in finished) - 1
    for step in (1.0, 5.0, 60.0):
        expected: dict[tuple[int, str], int] = {}
        for job in finished:
            slot = int((job.finished_at.timestamp() - start) // step)
            expected[(slot, job.state.value)] = expected.get((slot, job.state.value), 0) + 1
        found = ledger.finished_over_time(start, start + 3600, step)
        assert {(slot, state): n for slot, state, n in found} == expected
        assert found == sorted(found)
    assert ledger.finished_over_time(start + 3600, start + 7200, 60.0) == []
    now = clock.now()
    due: dict[str, list[float]] = {}
    for job in everyone:
        if job.state.value == "pending" and job.run_at.timestamp() <= now:
            due.setdefault(job.queue, []).append(job.run_at.timestamp())
    assert ledger.backlog(now) == [(queue, len(times), min(times))
                                   for queue, times in sorted(due.items())]
    assert "geo" in due and len(due["geo"]) == 1  # the scheduled one is not due yet
