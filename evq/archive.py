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
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from . import files
from .errors import InvalidInput, LedgerError, LedgerNotFound
from .ledger import Ledger, open_ledger
from .ledger.audit_records import ArchiveFile, ArchiveRequest, StoredEvent
from .transfer import FIELDS


@attrs.frozen
class Archived:
    events: int
    jobs: int
    file: Path
    sha256: str


def whole_flows(deleted: set[str], edges: Sequence[tuple[str, str]]) -> list[str]:
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


def archive(ledger: Ledger | str | Path, before: float, to: str | Path,
            now: float | None = None) -> Archived:
    """Move out the events of jobs deleted at or before `before`; write them to `to`
    (a new file, mode 0600). Nothing to move: no file, no event. `ledger`: a Ledger, or
    the path of a SQLite ledger file."""
    target = Path(to)
    files.refuse_existing(target, "archive")
    if isinstance(ledger, str | Path):
        ledger = open_ledger(ledger)
    file = _ArchiveFile(target)
    committed = False
    try:
        moved = ledger.archive(ArchiveRequest(before, target.name, file.write, whole_flows,
                                              now))
        committed = True
    except OSError as exc:
        raise LedgerError(f"cannot write the archive {target}: {exc.strerror or exc}; the "
                          "ledger is unchanged") from exc
    finally:
        if not committed:
            file.remove_if_made()
    return Archived(moved.events, moved.jobs, target, moved.sha256)


class _ArchiveFile:
    """The archive file one call writes (inside the ledger's transaction, before any
    event leaves it), and removes again if that transaction fails."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.made: os.stat_result | None = None

    def write(self, events: Sequence[StoredEvent]) -> str:
        """Write the file whole and durably (its name too); returns its SHA-256."""
        with files.written_whole(self.target, "archive") as temporary:
            digest = _write(temporary, events)
        self.made = os.stat(self.target)
        _sync_directory(self.target.parent)
        return digest

    def remove_if_made(self) -> None:
        """Remove the file this call made, and only that one (not one put there since)."""
        if self.made is None:
            return
        try:
            now = os.lstat(self.target)
            if (now.st_dev, now.st_ino) == (self.made.st_dev, self.made.st_ino):
                os.unlink(self.target)
        except OSError:
            pass


def _write(target: Path, rows: Sequence[StoredEvent]) -> str:
    with open(target, "r+b") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
            for row in rows:
                out.write(json.dumps(row._asdict(), ensure_ascii=False).encode() + b"\n")
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
