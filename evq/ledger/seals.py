"""The hash chain over the events: each commit that appends events adds a seal whose hash
covers the previous seal's hash and one canonical line per event. Verifying recomputes
it from the rows as stored, so an event edited, deleted or inserted by hand (even with
the append-only triggers dropped) shows up at its position; and the newest seal's hash,
kept elsewhere, shows a truncated tail."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from typing import Any

import attrs

from . import sql

GENESIS = "0" * 64
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


def chain(previous: str, lines: Iterable[bytes]) -> str:
    digest = hashlib.sha256(previous.encode())
    for item in lines:
        digest.update(b"\n")
        digest.update(item)
    return digest.hexdigest()


def add(conn: sqlite3.Connection, first: int, last: int, lines: list[bytes], now: float
        ) -> str:
    """Seal events first..last (their canonical lines) in the caller's transaction."""
    row = conn.execute(sql.LAST_SEAL).fetchone()
    sealed = chain(row[0] if row else GENESIS, lines)
    conn.execute(sql.ADD_SEAL, (last, first, sealed, now))
    return sealed


def seal_tail(conn: sqlite3.Connection, now: float) -> None:
    """Seal any events after the last seal (used where events were copied, not written
    through a Tx: replay into a new file)."""
    row = conn.execute("SELECT max(position) FROM evq_seals").fetchone()
    after = row[0] or 0
    rows = conn.execute(sql.EVENTS_AFTER, (after, 2**62)).fetchall()
    if rows:
        add(conn, rows[0][0], rows[-1][0], [line(*r) for r in rows], now)


@attrs.frozen
class ChainCheck:
    """What verifying the chain found. `position` names the first event where something
    disagrees (None when all is well); `head` is the newest seal's hash."""

    events: int
    seals: int
    head: str
    problem: str | None = None
    position: int | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify(conn: sqlite3.Connection, expect_head: str | None = None) -> ChainCheck:
    """Recompute the chain over every event, in order, reading in short chunks.

    `expect_head`: a seal hash exported earlier (the head `evq verify` printed then). It
    must still be in the chain: whoever rewrote the ledger before it, or cut it short
    after it, cannot bring it back; events appended since then are fine."""
    previous, expected_first, events, seals = GENESIS, 1, 0, 0
    anchored = expect_head is None
    pending: list[Any] = []
    event_after = 0
    seal_after = 0

    def fail(problem: str, position: int | None) -> ChainCheck:
        return ChainCheck(events, seals, previous, problem, position)

    while True:
        seal_rows = conn.execute(sql.SEALS_FROM, (seal_after, _BATCH)).fetchall()
        if not seal_rows:
            break
        for last, first, stored, _ in seal_rows:
            seal_after = last
            if first != expected_first:
                return fail(f"the seal ending at {last} starts at {first}, expected "
                            f"{expected_first}: events are missing or were added", expected_first)
            while len(pending) < last - first + 1:
                more = conn.execute(sql.EVENTS_AFTER, (event_after, _BATCH)).fetchall()
                if not more:
                    break
                event_after = more[-1][0]
                pending.extend(more)
            covered, pending = pending[: last - first + 1], pending[last - first + 1:]
            for offset, row in enumerate(covered):
                if row[0] != first + offset:
                    return fail(f"event {first + offset} is missing (found {row[0]})",
                                first + offset)
            if len(covered) != last - first + 1:
                return fail(f"events {first + len(covered)}..{last} are missing",
                            first + len(covered))
            computed = chain(previous, (line(*row) for row in covered))
            if computed != stored:
                bad = _first_changed(covered)
                return fail(f"the seal of events {first}..{last} does not match: an event "
                            "was edited, deleted or inserted by hand", bad)
            previous, expected_first = stored, last + 1
            anchored = anchored or stored == expect_head
            events += len(covered)
            seals += 1
    extra = pending or conn.execute(sql.EVENTS_AFTER, (event_after, 1)).fetchall()
    if extra:
        return fail(f"event {extra[0][0]} and after are not sealed: inserted by hand",
                    extra[0][0])
    if not anchored:
        return fail(f"the expected seal {str(expect_head)[:16]}... is not in the chain: "
                    "events were truncated or the ledger was rewritten", expected_first)
    return ChainCheck(events, seals, previous)


def _first_changed(rows: list[Any]) -> int:
    """Within a bad seal, the first event that looks edited: its stored data no longer
    parses, or failing that the seal's first event."""
    for row in rows:
        try:
            json.loads(row[8])
        except (TypeError, ValueError):
            return int(row[0])
    return int(rows[0][0])
