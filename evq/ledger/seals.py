"""The hash chain over the events. Every commit that appends events ends with a `seal`
event whose hash covers the previous seal's hash and one canonical line per event since
it (data {"first": position, "hash": hex}). The chain lives in the append-only log
itself. Verifying recomputes it from the rows as stored, so an event edited, deleted or
inserted by hand (even with the append-only triggers dropped) shows up at its position,
and a seal hash exported earlier shows a truncated or rewritten ledger."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from typing import Any

import attrs

from . import sql

GENESIS = "0" * 64
SEAL = "seal"
_BATCH = 5000


def line(position: int, at: float, kind: str, job_id: str | None, queue: str | None,
         job: str | None, attempt: int | None, worker: str | None, data: str,
         v: int = 1) -> bytes:
    """One event in the canonical form the chain hashes: its fields joined by the unit
    separator, data as the exact stored text. Unambiguous: names and ids never hold that
    character or are empty, and JSON text never holds a raw control character."""
    return (f"{position}\x1f{at!r}\x1f{kind}\x1f{job_id or ''}\x1f{queue or ''}\x1f"
            f"{job or ''}\x1f{'' if attempt is None else attempt}\x1f{worker or ''}\x1f"
            f"{data}\x1f{v}").encode()


def data_text(first: int, sealed: str) -> str:
    """A seal event's data as stored: the text `dumps({"first": ..., "hash": ...})` gives,
    written directly (it is on every commit's path)."""
    return f'{{"first":{int(first)},"hash":"{sealed}"}}'


def chain(previous: str, lines: Iterable[bytes]) -> str:
    digest = hashlib.sha256(previous.encode())
    for item in lines:
        digest.update(b"\n")
        digest.update(item)
    return digest.hexdigest()


@attrs.define
class LastSeal:
    """The newest seal a connection wrote. When the next commit on that connection starts
    right after it (no other writer in between), its hash is known without a query:
    positions are never reused and events never change."""

    position: int = 0
    hash: str = GENESIS
    at: float = 0.0  # the seal's time: no later commit may be stamped before it


def previous_hash(conn: sqlite3.Connection, first: int, last: LastSeal | None) -> str:
    if last is not None and last.position == first - 1 and last.position:
        return last.hash
    row = conn.execute(sql.LAST_SEAL).fetchone()
    return str(json.loads(row[1])["hash"]) if row else GENESIS


@attrs.frozen
class ChainCheck:
    """What verifying the chain found. `position` names the first event where something
    disagrees (None when all is well); `head` is the newest seal's hash; `unchecked`
    counts archived events whose archive file was not given."""

    events: int
    seals: int
    head: str
    problem: str | None = None
    position: int | None = None
    unchecked: int = 0

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify(conn: sqlite3.Connection, expect_head: str | None = None,
           archived: dict[int, str] | None = None,
           archive_rows: dict[int, tuple[Any, ...]] | None = None,
           archive_hashes: set[str] | None = None) -> ChainCheck:
    """Recompute the chain over every event, in order, reading in short chunks.

    `expect_head`: a seal hash exported earlier (the head `evq verify` printed then). It
    must still be in the chain: whoever rewrote the ledger before it, or cut it short
    after it, cannot bring it back; events appended since then are fine.
    `archived`: positions that `archive` events say were moved out (-> their file's
    sha256); with `archive_rows` from files whose sha256 is in `archive_hashes` they are
    put back and checked, otherwise the seals covering them are taken as they are."""
    archived = archived or {}
    archive_rows = archive_rows or {}
    archive_hashes = archive_hashes or set()
    previous, first, events, seals, after, unchecked = GENESIS, 1, 0, 0, 0, 0
    cursor = 1  # the next position expected
    blind = False  # this seal covers an archived event we cannot see
    anchored = expect_head is None
    lines: list[bytes] = []
    rows: list[Any] = []

    def fail(problem: str, position: int | None) -> ChainCheck:
        return ChainCheck(events, seals, previous, problem, position, unchecked)

    while True:
        chunk = conn.execute(sql.EVENTS_AFTER, (after, _BATCH)).fetchall()
        if not chunk:
            break
        after = chunk[-1][0]
        for row in chunk:
            while cursor < row[0]:  # a gap: archived, or missing
                if cursor not in archived:
                    return fail(f"event {cursor} is missing (the next one is {row[0]})",
                                cursor)
                kept = archive_rows.get(cursor)
                if kept is not None and archived[cursor] in archive_hashes:
                    lines.append(line(*kept))
                    rows.append(kept)
                else:
                    blind = True
                    unchecked += 1
                cursor += 1
            cursor += 1
            if row[2] != SEAL:
                lines.append(line(*row))
                rows.append(row)
                continue
            try:
                seal = json.loads(row[8])
                stored, covers = str(seal["hash"]), int(seal["first"])
            except (TypeError, ValueError, KeyError):
                return fail(f"the seal at {row[0]} was edited by hand", row[0])
            if covers != first or (not blind and chain(previous, lines) != stored):
                return fail(f"the seal at {row[0]} does not match events {first}..{row[0] - 1}:"
                            " an event was edited, deleted or inserted by hand",
                            _first_changed(rows) if rows else row[0])
            previous, first, blind = stored, row[0] + 1, False
            anchored = anchored or stored == expect_head
            events += len(lines)
            seals += 1
            lines, rows = [], []
    if lines or blind:
        return fail(f"event {first} and after are not sealed: inserted by hand", first)
    if not anchored:
        return fail(f"the expected seal {str(expect_head)[:16]}... is not in the chain: "
                    "events were truncated or the ledger was rewritten", first)
    return ChainCheck(events, seals, previous, unchecked=unchecked)


def _first_changed(rows: list[Any]) -> int:
    """Within a bad seal, the first event that looks edited: its stored data no longer
    parses, or failing that the seal's first event."""
    for row in rows:
        try:
            json.loads(row[8])
        except (TypeError, ValueError):
            return int(row[0])
    return int(rows[0][0])
