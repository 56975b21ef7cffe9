"""Events in and out of a SQLite ledger file, losslessly: export (every event as stored,
with the hashes an `archive` event kept), import into a new file through the same
transitions as the write path, and archive (the events of deleted jobs moved out into a
file, their hashes kept, in one transaction)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence

from ... import files
from ...errors import InvalidInput, LedgerError
from ..audit_records import ArchiveRequest, Exported, Moved, StoredEvent
from . import chain, connection, schema, seals, sql
from .base import EngineBase
from .failures import ledger_error
from .tx import Tx

_CHUNK = 2000
# Events that also shape another table than evq_jobs stay in the ledger.
_KEEP = ("schedule", "schedule_orphan")


class TransferSide(EngineBase):
    """Export, import and archive."""

    def export(self) -> Iterator[Exported]:
        with self.reading() as conn:
            connection.require_schema(conn, self.path)
            yield from exported(conn)

    def import_(self, events: Iterable[Exported]) -> int:
        try:
            with files.written_whole(self.path, "import", self.file_mode,
                                     database=True) as temporary:
                conn = connection.connect(temporary, file_mode=self.file_mode)
                try:
                    count = _load(conn, events)
                    found = chain.check(conn)
                finally:
                    conn.close()
                if not found.ok:
                    raise InvalidInput(
                        f"the imported events' hash chain is broken at position "
                        f"{found.position}: {found.problem}; nothing was imported")
        except sqlite3.Error as exc:
            raise ledger_error(exc, self.path, "importing into", self.busy_timeout) from exc
        return count

    def archive(self, request: ArchiveRequest) -> Moved:
        if not self.path.exists():
            raise LedgerError(f"no ledger at {self.path}: check the path or EVQ_DB")
        try:
            conn = connection.connect(self.path, busy_timeout_ms=self.busy_timeout_ms)
            try:
                connection.require_schema(conn, self.path)
                conn.execute(sql.BEGIN_IMMEDIATE)
                try:
                    moved = _archive(conn, request)
                    conn.execute(sql.COMMIT if moved.events else sql.ROLLBACK)
                except BaseException:
                    if conn.in_transaction:
                        conn.execute(sql.ROLLBACK)
                    raise
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise ledger_error(exc, self.path, "archiving events of",
                               self.busy_timeout) from exc
        return moved


def exported(conn: sqlite3.Connection) -> Iterator[Exported]:
    """Every event of the ledger on `conn` as stored, in order, read in short chunks, an
    archive event with the hashes it kept."""
    after = 0
    while True:
        rows = conn.execute(sql.EVENTS_AFTER, (after, _CHUNK)).fetchall()
        for row in rows:
            event = StoredEvent._make(row)
            kept = () if event.kind != "archive" else tuple(
                (position, digest) for position, digest in
                conn.execute(sql.KEPT_HASHES_OF_ARCHIVE, (event.position,)))
            yield Exported(event, kept)
        if len(rows) < _CHUNK:
            return
        after = rows[-1][0]


def _load(conn: sqlite3.Connection, events: Iterable[Exported]) -> int:
    connection.migrate(conn)
    conn.execute(sql.BEGIN_IMMEDIATE)
    count = 0
    try:
        for item in events:
            event = item.event
            try:
                conn.execute(sql.IMPORT_EVENT, event)
                conn.executemany(sql.KEEP_HASH, ((position, digest, event.position)
                                                 for position, digest in item.kept))
            except sqlite3.IntegrityError as exc:
                raise InvalidInput(
                    f"line {item.line} (position {event.position}, kind {event.kind}) is "
                    f"refused by the ledger's transitions ({exc}): the history is not "
                    "valid; nothing was imported") from None
            except (sqlite3.InterfaceError, sqlite3.ProgrammingError, OverflowError) as exc:
                raise InvalidInput(f"line {item.line} cannot be stored ({exc}): nothing "
                                   "was imported") from None
            count += 1
        conn.execute(sql.COMMIT)
    except BaseException:
        conn.execute(sql.ROLLBACK)
        raise
    return count


def _archive(conn: sqlite3.Connection, request: ArchiveRequest) -> Moved:
    """Inside the write transaction: choose, write the file (request.write), move out."""
    ids = request.choose({row[0] for row in conn.execute(sql.ARCHIVABLE_JOBS,
                                                         (request.before,))},
                         conn.execute(sql.FLOW_EDGES_IN_LEDGER).fetchall())
    rows = [StoredEvent._make(row) for row in conn.execute(
        sql.EVENTS_OF_JOBS, (json.dumps(ids), json.dumps(_KEEP)))] if ids else []
    if not rows:
        return Moved(0, 0, "")
    digest = request.write(rows)
    now = time.time() if request.now is None else request.now
    _move_out(Tx.locked(conn, now), rows, ids, request, digest)
    return Moved(len(rows), len(ids), digest)


def _move_out(tx: Tx, rows: Sequence[StoredEvent], ids: list[str], request: ArchiveRequest,
              digest: str) -> None:
    """Delete the archived events, keep their hashes, record the archive and seal."""
    positions = [row.position for row in rows]
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
        "file": request.name, "sha256": digest, "events": len(rows), "jobs": len(ids),
        "before": request.before, "positions": _ranges(positions), "kept": len(rows)})
    conn.execute(sql.KEEP_HASHES, (position, json.dumps(
        [[row.position, seals.event_hash(row)] for row in rows])))
    tx.seal()


def _ranges(positions: list[int]) -> list[list[int]]:
    ranges: list[list[int]] = []
    for position in positions:
        if ranges and ranges[-1][1] == position - 1:
            ranges[-1][1] = position
        else:
            ranges.append([position, position])
    return ranges
