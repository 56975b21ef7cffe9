"""Retention without losing the audit trail: `archive` moves the events of jobs that are
finished and were removed from the current state (a `delete` event before a time) into a
gzip JSON-lines file (the export format) and out of the ledger, in one transaction that
keeps each removed event's own hash (`evq_archived`) and ends with an `archive` event
(the file's SHA-256 and the positions it holds) and a seal.

The file is written whole under a temporary name and linked into place (never replacing
a file) before the ledger transaction commits, never after: the events leave the ledger
only once their file is durable. If that transaction fails, the file it made is removed
again, and nothing else ever is (a crash in between leaves a file no archive event names:
nothing was removed from the ledger). The hash chain stays verifiable across
the cut: every seal written since schema 4 is recomputed from the kept hashes, and
`evq verify --archive FILE` checks the archived events themselves against them. Replay
needs no archive: archived jobs have no state left to rebuild (archiving also removes
their row in evq_deleted_jobs, which only served to find their enqueue event)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sqlite3
import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from . import files
from .errors import InvalidInput, LedgerError, LedgerNotFound
from .ledger.records import ArchiveFile
from .ledger.sqlite import connection, failures, schema, seals, sql
from .ledger.sqlite.tx import Tx
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
    (a new file, mode 0600). Nothing to move: no file, no event."""
    target = Path(to)
    files.refuse_existing(target, "archive")
    if not Path(path).exists():
        raise LedgerError(f"no ledger at {path}: check the path or EVQ_DB")
    made: os.stat_result | None = None  # the file this call linked into place
    committed = False
    try:
        conn = connection.connect(path)
        try:
            connection.require_schema(conn, path)
            conn.execute(sql.BEGIN_IMMEDIATE)
            try:
                ids = _whole_flows(
                    {row[0] for row in conn.execute(sql.ARCHIVABLE_JOBS, (before,))},
                    conn.execute(sql.FLOW_EDGES_IN_LEDGER).fetchall())
                rows = conn.execute(sql.EVENTS_OF_JOBS, (json.dumps(ids), json.dumps(_KEEP))
                                    ).fetchall() if ids else []
                if not rows:
                    conn.execute(sql.ROLLBACK)
                    return Archived(0, 0, target, "")
                with files.written_whole(target, "archive") as temporary:
                    digest = _write(temporary, rows)
                made = os.stat(target)
                _sync_directory(target.parent)
                _move_out(Tx.locked(conn, time.time() if now is None else now), rows, ids, before,
                          target.name, digest)
                conn.execute(sql.COMMIT)
                committed = True
            except BaseException:
                if conn.in_transaction:
                    conn.execute(sql.ROLLBACK)
                raise
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise failures.ledger_error(exc, path, "archiving events of") from exc
    except OSError as exc:
        raise LedgerError(f"cannot write the archive {target}: {exc.strerror or exc}; the "
                          "ledger is unchanged") from exc
    finally:
        if made is not None and not committed:
            _remove_if_made(target, made)
    return Archived(len(rows), len(ids), target, digest)


def _move_out(tx: Tx, rows: list[Any], ids: list[str], before: float, name: str,
              digest: str) -> None:
    """Delete the archived events, keep their hashes, record the archive and seal."""
    positions = [row[0] for row in rows]
    conn = tx.conn
    try:
        conn.execute(sql.DROP_EVENTS_NO_DELETE)
    except sqlite3.OperationalError:
        raise LedgerError("the ledger's append-only trigger evq_events_no_delete is missing: "
                          "someone changed the file by hand; run `evq verify` on it. "
                          "Nothing was archived") from None
    conn.execute(sql.DELETE_EVENTS_AT, (json.dumps(positions),))
    conn.execute(schema.EVENTS_NO_DELETE)
    conn.execute(sql.FORGET_DELETED_JOBS, (json.dumps(ids),))
    position = tx.append("archive", data={
        "file": name, "sha256": digest, "events": len(rows), "jobs": len(ids),
        "before": before, "positions": _ranges(positions), "kept": len(rows)})
    conn.execute(sql.KEEP_HASHES, (position, json.dumps(
        [[row[0], seals.event_hash(row)] for row in rows])))
    tx.seal()


def _write(target: Path, rows: list[Any]) -> str:
    with open(target, "r+b") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
            for row in rows:
                out.write(json.dumps(dict(zip(FIELDS, row, strict=True)),
                                     ensure_ascii=False).encode() + b"\n")
        raw.flush()
        os.fsync(raw.fileno())
        raw.seek(0)
        return hashlib.file_digest(raw, "sha256").hexdigest()


def _sync_directory(directory: Path) -> None:
    """Make the new file's name durable before the events leave the ledger."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_if_made(target: Path, made: os.stat_result) -> None:
    """Remove the archive this call made, and only that file (not one put there since)."""
    try:
        now = os.lstat(target)
        if (now.st_dev, now.st_ino) == (made.st_dev, made.st_ino):
            os.unlink(target)
    except OSError:
        pass


def _ranges(positions: list[int]) -> list[list[int]]:
    ranges: list[list[int]] = []
    for position in positions:
        if ranges and ranges[-1][1] == position - 1:
            ranges[-1][1] = position
        else:
            ranges.append([position, position])
    return ranges


def read_files(names: Iterable[str | Path]) -> list[ArchiveFile]:
    """Archive files, read whole: each one's SHA-256 and events by position."""
    found = []
    for name in names:
        try:
            data = Path(name).read_bytes()
        except FileNotFoundError:
            raise LedgerNotFound(f"the archive file {name} does not exist: give the path "
                                 "of a file `evq archive` wrote") from None
        except OSError as exc:
            raise InvalidInput(f"cannot read the archive file {name}: "
                               f"{exc.strerror or exc}") from None
        try:
            lines = gzip.decompress(data).decode().splitlines()
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
            raise InvalidInput(f"{name} is not an evq archive (a gzip file of JSON lines): "
                               f"{exc}") from None
        rows: dict[int, tuple[Any, ...]] = {}
        for number, line in enumerate(lines, 1):
            try:
                event = json.loads(line)
                rows[int(event["position"])] = tuple(event[field] for field in FIELDS)
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidInput(f"{name}, line {number}, is not an archived evq event: "
                                   f"{exc}") from None
        found.append(ArchiveFile(str(name), hashlib.sha256(data).hexdigest(), rows))
    return found


def load(names: Iterable[str | Path]) -> tuple[dict[int, tuple[Any, ...]], set[str]]:
    """Archived events by position, and the sha256 of each file read."""
    read = read_files(names)
    rows: dict[int, tuple[Any, ...]] = {}
    for file in read:
        rows.update(file.rows)
    return rows, {file.sha256 for file in read}
