"""Retention without losing the audit trail: `archive` moves the events of jobs that are
finished and were removed from the current state (a `delete` event before a time) into a
gzip JSON-lines file (the export format) and out of the ledger, in one transaction that
ends with an `archive` event (the file's SHA-256 and the positions it holds) and a seal.

The hash chain stays verifiable across the cut: `evq verify --archive FILE` puts the
archived events back in their places; without the file, verify accepts the seals that
cover archived positions and says how many events it could not check. Replay needs no
archive: archived jobs have no state left to rebuild (archiving also removes their
row in evq_deleted_jobs, which only served to find their enqueue event)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from .errors import LedgerError
from .ledger import connection, schema, sql
from .ledger.tx import Tx
from .transfer import FIELDS

# Events that also shape another table than evq_jobs stay in the ledger.
_KEEP = ("schedule", "schedule_orphan")


@attrs.frozen
class Archived:
    events: int
    jobs: int
    file: Path
    sha256: str


def _whole_flows(deleted: set[str], edges: list[tuple[str, str]]) -> list[str]:
    """Of the deleted jobs, those whose events can leave the ledger: a flow's child only
    with its parent (or after it), since the parent's `wait` event needs the child's
    enqueue to replay."""
    parents: dict[str, set[str]] = {}
    for parent, child in edges:  # a child can have had more than one parent, in turn
        parents.setdefault(child, set()).add(parent)
    kept = set(deleted)
    changed = True
    while changed:
        changed = False
        for job_id in list(kept):
            if not parents.get(job_id, set()) <= kept:
                kept.discard(job_id)
                changed = True
    return sorted(kept)


def archive(path: str | Path, before: float, to: str | Path, now: float | None = None
            ) -> Archived:
    """Move out the events of jobs deleted at or before `before`; write them to `to`
    (a new file). Nothing to move: no file, no event."""
    target = Path(to)
    if target.exists():
        raise LedgerError(f"{target} already exists; archive writes a new file")
    try:
        with connection.write_transaction(path) as conn:
            ids = _whole_flows({row[0] for row in conn.execute(sql.ARCHIVABLE_JOBS, (before,))},
                               conn.execute(sql.FLOW_EDGES_IN_LEDGER).fetchall())
            rows = conn.execute(sql.EVENTS_OF_JOBS, (json.dumps(ids), json.dumps(_KEEP))
                                ).fetchall() if ids else []
            if not rows:
                return Archived(0, 0, target, "")
            digest = _write(target, rows)
            positions = [row[0] for row in rows]
            conn.execute(sql.DROP_EVENTS_NO_DELETE)
            conn.execute(sql.DELETE_EVENTS_AT, (json.dumps(positions),))
            conn.execute(schema.EVENTS_NO_DELETE)
            conn.execute(sql.FORGET_DELETED_JOBS, (json.dumps(ids),))
            tx = Tx.locked(conn, time.time() if now is None else now)
            tx.append("archive", data={
                "file": target.name, "sha256": digest, "events": len(rows), "jobs": len(ids),
                "before": before, "positions": _ranges(positions)})
            tx.seal()
    except BaseException:
        target.unlink(missing_ok=True)  # no half-made archive beside an unchanged ledger
        raise
    return Archived(len(rows), len(ids), target, digest)


def _write(target: Path, rows: list[Any]) -> str:
    with open(target, "xb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
            for row in rows:
                out.write(json.dumps(dict(zip(FIELDS, row, strict=True)),
                                     ensure_ascii=False).encode() + b"\n")
        raw.flush()
        os.fsync(raw.fileno())
    return hashlib.sha256(target.read_bytes()).hexdigest()


def _ranges(positions: list[int]) -> list[list[int]]:
    ranges: list[list[int]] = []
    for position in positions:
        if ranges and ranges[-1][1] == position - 1:
            ranges[-1][1] = position
        else:
            ranges.append([position, position])
    return ranges


def archived_positions(conn: sqlite3.Connection) -> dict[int, str]:
    """Every position the ledger says was archived, and the sha256 of its file."""
    found: dict[int, str] = {}
    for (data,) in conn.execute(sql.ARCHIVE_EVENTS):
        record = json.loads(data)
        for low, high in record["positions"]:
            for position in range(low, high + 1):
                found[position] = record["sha256"]
    return found


def load(files: Iterable[str | Path]) -> tuple[dict[int, tuple[Any, ...]], set[str]]:
    """Archived events by position, and the sha256 of each file read."""
    rows: dict[int, tuple[Any, ...]] = {}
    hashes: set[str] = set()
    for file in files:
        data = Path(file).read_bytes()
        hashes.add(hashlib.sha256(data).hexdigest())
        for line in gzip.decompress(data).decode().splitlines():
            event = json.loads(line)
            rows[event["position"]] = tuple(event[field] for field in FIELDS)
    return rows, hashes
