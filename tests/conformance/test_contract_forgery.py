"""The forgeries of the trust issue, made around the interface by the engine's forger
(with the append-only guards put back, so that only the hash chain can tell): none may
pass `verify`, with or without a trusted head. Archived events are checked against their
file, or reported by position as not checked, never taken as verified."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from ledger_kit import EngineKit, MemoryArchive, claim, head_of, new_job, sound, success

import evq
from evq.ledger import Ledger, audit_records

Built = dict[str, Any]


@pytest.fixture
async def built(engine: EngineKit, place: str, ledger: Ledger, clock: evq.FakeClock
                ) -> Built:
    """Jobs A, B and C enqueued in one commit and run; B and C deleted. `head`: the head
    verify gave then. The runtime is closed: the forger has the ledger to itself."""
    jobs = [new_job(clock, "pay", "pay", payload=amount) for amount in (100, 200, 300)]
    await ledger.enqueue(jobs)
    for attempt in await claim(ledger, queues=["pay"], names=["pay"]):
        await ledger.report(attempt, success({"paid": True}))
    clock.advance(10)
    await ledger.delete(jobs[1].id, None)
    await ledger.delete(jobs[2].id, None)
    positions = {job.id: [e.position for e in await ledger.history(job.id)] for job in jobs}
    await ledger.close()
    check = ledger.verify()
    sound(check)
    return {"a": jobs[0].id, "b": jobs[1].id, "c": jobs[2].id, "positions": positions,
            "head": head_of(check), "forger": engine.forger(place),
            "at": clock.now() + 3600, "newest": ledger.last_position()}


def ranges(positions: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for position in sorted(positions):
        if out and out[-1][1] == position - 1:
            out[-1][1] = position
        else:
            out.append([position, position])
    return out


def claim_of(positions: list[int], keeps: bool) -> dict[str, Any]:
    """What a made-up archive event says it moved (the `archive` kind's data)."""
    data: dict[str, Any] = {"file": "made-up.jsonl.gz",
                            "sha256": hashlib.sha256(b"x").hexdigest(),
                            "events": len(positions), "jobs": 1, "before": 0.0,
                            "positions": ranges(positions)}
    if keeps:
        data["kept"] = len(positions)
    return data


def broken(ledger: Ledger, head: str | None = None) -> audit_records.ChainCheck:
    check = ledger.verify(expect_head=head)
    assert check.chain is not None and not check.chain.ok, check.chain
    return check.chain


@pytest.mark.parametrize("anchored", [False, True], ids=["plain", "expect-head"])
@pytest.mark.parametrize("keeps", [False, True], ids=["no-kept-field", "kept-field"])
def test_an_edit_and_an_erasure_covered_by_a_made_up_archive_event_fail(
        ledger: Ledger, built: Built, anchored: bool, keeps: bool) -> None:
    forger = built["forger"]
    edited = forger.edit_payload(built["a"], 1_000_000)
    erased = [row[0] for row in forger.erase_job(built["b"])]
    forger.append_sealed("archive", claim_of(erased, keeps), built["at"])
    chain = broken(ledger, built["head"] if anchored else None)
    assert chain.position is not None and chain.position <= max(edited, *erased) + 1


@pytest.mark.parametrize("anchored", [False, True], ids=["plain", "expect-head"])
def test_the_same_forgery_with_the_erased_events_true_hashes_kept_fails(
        ledger: Ledger, built: Built, anchored: bool) -> None:
    forger = built["forger"]
    forger.edit_payload(built["a"], 1_000_000)
    rows = forger.erase_job(built["b"])
    archive_at = forger.append_sealed("archive", claim_of([r[0] for r in rows], True),
                                      built["at"])
    forger.keep_hashes(rows, archive_at)
    chain = broken(ledger, built["head"] if anchored else None)
    assert chain.problem is not None and "does not match" in chain.problem


def test_an_erasure_with_its_true_hashes_kept_is_reported_not_verified(
        ledger: Ledger, built: Built) -> None:
    """Erasing B (no edit) and keeping its true hashes under a made-up archive event
    after the head looks like a real archive made after it: reported, not checked."""
    forger = built["forger"]
    rows = forger.erase_job(built["b"])
    erased = [row[0] for row in rows]
    archive_at = forger.append_sealed("archive", claim_of(erased, True), built["at"])
    forger.keep_hashes(rows, archive_at)
    check = ledger.verify(expect_head=built["head"])
    sound(check, complete=False)
    assert check.chain is not None
    spans = tuple((low, high) for low, high in ranges(erased))
    assert check.chain.after_head == ((archive_at, spans),)
    assert check.chain.unchecked == spans


@pytest.mark.parametrize("what", ["live", "seal", "after-itself", "twice", "no-kept-hash"])
def test_an_archive_event_claiming_what_it_could_not_have_removed_fails(
        ledger: Ledger, built: Built, clock: evq.FakeClock, what: str) -> None:
    forger = built["forger"]
    if what == "live":
        claimed = built["positions"][built["a"]]
    elif what == "seal":
        claimed = [next(e.position for e in ledger.read_events() if e.kind == "seal")]
    elif what == "after-itself":
        claimed = [built["newest"] + 5]
    elif what == "twice":
        archive = MemoryArchive()
        assert ledger.archive(archive.request(clock.now(), clock.now())).events > 0
        claimed = built["positions"][built["b"]][:1]
    else:
        claimed = [row[0] for row in forger.erase_job(built["c"])]
    forger.append_sealed("archive", claim_of(claimed, True), built["at"])
    for head in (None, built["head"]):
        chain = broken(ledger, head)
        assert chain.position == claimed[0], (what, chain)


def test_a_real_archive_after_the_trusted_head_is_reported_and_checked_with_its_file(
        ledger: Ledger, built: Built, clock: evq.FakeClock) -> None:
    moved = built["positions"][built["b"]] + built["positions"][built["c"]]
    archive = MemoryArchive()
    assert ledger.archive(archive.request(clock.now(), clock.now())).events == len(moved)
    archive_at = ledger.last_position() - 1  # the archive event, then its seal
    spans = tuple((low, high) for low, high in ranges(moved))
    plain = ledger.verify(expect_head=built["head"])
    sound(plain, complete=False)
    assert plain.chain is not None
    assert plain.chain.after_head == ((archive_at, spans),)
    assert plain.chain.unchecked == spans
    full = ledger.verify(expect_head=built["head"], archives=[archive.file()])
    sound(full)
    assert full.chain is not None and full.chain.checked == len(moved)
    assert full.chain.after_head == ((archive_at, spans),)


def test_an_archive_file_whose_events_were_changed_fails(ledger: Ledger, built: Built,
                                                        clock: evq.FakeClock) -> None:
    archive = MemoryArchive()
    ledger.archive(archive.request(clock.now(), clock.now()))
    position, row = min(archive.rows.items())
    changed = audit_records.ArchiveFile(archive.name, archive.sha256,
                                  {**archive.rows, position: (row[0], row[1] + 1, *row[2:])})
    check = ledger.verify(archives=[changed])
    assert check.chain is not None and not check.chain.ok, check.chain
    assert check.chain.position == position


@pytest.mark.parametrize("field", ["at", "worker", "job"])
def test_an_edited_seal_fails(ledger: Ledger, built: Built, field: str) -> None:
    seal = next(e.position for e in ledger.read_events() if e.kind == "seal")
    built["forger"].edit_seal(seal, field)
    assert broken(ledger).position is not None


def test_an_expected_head_that_is_no_seal_of_the_ledger_is_named_as_such(
        ledger: Ledger, built: Built) -> None:
    stranger = hashlib.sha256(b"another ledger").hexdigest()
    chain = broken(ledger, stranger)
    assert chain.problem is not None and "is not a seal of this ledger" in chain.problem
    assert chain.position is None
