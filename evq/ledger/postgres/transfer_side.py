"""Events in and out of a PostgreSQL ledger, losslessly: export (the SQLite engine's own,
on a connection here), import into a ledger that holds no events yet (one transaction:
every event through the same transitions as the write path, the chain checked before
the commit, so a refused or broken history leaves nothing), and archive."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any

import psycopg

from ...errors import InvalidInput, LedgerError
from ..audit_records import ArchiveRequest, Exported, Moved, StoredEvent
from ..sqlite import chain, seals
from ..sqlite import sql as named
from ..sqlite.transfer_side import _KEEP, TransferSide, _ranges, exported
from . import connection, sql
from .base import PgBase
from .dialect import Dialect, scalar
from .tx import PgTx, refusal_text


class PgTransferSide(TransferSide, PgBase):
    """Export, import and archive on PostgreSQL."""

    def export(self) -> Iterator[Exported]:
        with self._checked("exporting") as conn:
            yield from exported(conn)  # type: ignore[arg-type]

    def import_(self, events: Iterable[Exported]) -> int:
        return self.load(events, check_chain=True)

    def load(self, events: Iterable[Exported], *, check_chain: bool) -> int:
        """Write `events` into this ledger, which holds none yet, in one transaction;
        with `check_chain`, only if their hash chain is whole (a replay up to a position
        may end between a commit's events and its seal)."""
        with connection.session(self.target, "importing into") as conn:
            raw = conn.raw
            raw.execute(sql.BEGIN_LOCKED.format(key=self.target.lock_key))
            try:
                # The schema is made in the import's own transaction: a refused import
                # leaves no ledger behind.
                connection.migrate_in(conn, self.target)
                if int(scalar(conn.execute(named.HEAD_POSITION))):
                    raise LedgerError(
                        f"the ledger {self.target.shown} already holds events; import "
                        "writes a new ledger and never adds to one: give a new schema "
                        "(?schema=name) or an empty database")
                count = _load(raw, events)
                found = chain.check(conn) if check_chain else None  # type: ignore[arg-type]
                if found is not None and not found.ok:
                    raise InvalidInput(
                        f"the imported events' hash chain is broken at position "
                        f"{found.position}: {found.problem}; nothing was imported")
                raw.execute(sql.NOTIFY_COMMIT.format(channel=sql.channel(self.target.schema)))
            except BaseException:
                if not raw.closed and conn.in_transaction:
                    raw.execute(sql.ROLLBACK)
                raise
        return count

    def archive(self, request: ArchiveRequest) -> Moved:
        with self._checked("archiving events of") as conn:
            raw = conn.raw
            raw.execute(sql.BEGIN_LOCKED.format(key=self.target.lock_key))
            try:
                moved = _archive(conn, request)
                raw.execute(sql.NOTIFY_COMMIT.format(channel=sql.channel(self.target.schema))
                            if moved.events else sql.ROLLBACK)
            except BaseException:
                if not raw.closed and conn.in_transaction:
                    raw.execute(sql.ROLLBACK)
                raise
        return moved


def _load(raw: psycopg.Connection[Any], events: Iterable[Exported]) -> int:
    count = 0
    for item in events:
        event = item.event
        try:
            raw.execute(sql.IMPORT, tuple(event))
            for position, digest in item.kept:
                raw.execute(sql.KEEP_HASH, (position, digest, event.position))
        except (psycopg.DataError, psycopg.ProgrammingError, OverflowError) as exc:
            raise InvalidInput(f"line {item.line} cannot be stored ({exc}): nothing was "
                               "imported") from None
        except psycopg.Error as exc:
            refused = refusal_text(exc)
            if refused is None and not isinstance(exc, psycopg.IntegrityError):
                raise
            raise InvalidInput(
                f"line {item.line} (position {event.position}, kind {event.kind}) is "
                f"refused by the ledger's transitions ({refused or exc}): the history is "
                "not valid; nothing was imported") from None
        count += 1
    return count


def _archive(conn: Dialect, request: ArchiveRequest) -> Moved:
    """Inside the write transaction: choose, write the file (request.write), move out."""
    ids = request.choose({row[0] for row in conn.execute(named.ARCHIVABLE_JOBS,
                                                         (request.before,))},
                         conn.execute(named.FLOW_EDGES_IN_LEDGER).fetchall())
    rows = [StoredEvent._make(row) for row in conn.execute(
        named.EVENTS_OF_JOBS, (json.dumps(ids), json.dumps(_KEEP)))] if ids else []
    if not rows:
        return Moved(0, 0, "")
    digest = request.write(rows)
    now = time.time() if request.now is None else request.now
    tx = PgTx.locked(conn, now)
    positions = [row.position for row in rows]
    raw = conn.raw
    if raw.execute(sql.GUARD_EXISTS, ("evq_events_no_delete",)).fetchone() is None:
        raise LedgerError("the ledger's append-only trigger evq_events_no_delete is missing: "
                          "someone changed the schema by hand; run `evq verify` on it. "
                          "Nothing was archived")
    # The guard is lifted only inside this transaction: no other connection ever sees
    # the log without it.
    raw.execute(sql.DISABLE_NO_DELETE)
    conn.execute(named.DELETE_EVENTS_AT, (json.dumps(positions),))
    raw.execute(sql.ENABLE_NO_DELETE)
    conn.execute(named.FORGET_DELETED_JOBS, (json.dumps(ids),))
    position = tx.append("archive", data={
        "file": request.name, "sha256": digest, "events": len(rows), "jobs": len(ids),
        "before": request.before, "positions": _ranges(positions), "kept": len(rows)})
    conn.execute(named.KEEP_HASHES, (position, json.dumps(
        [[row.position, seals.event_hash(row)] for row in rows])))
    tx.seal()
    return Moved(len(rows), len(ids), digest)

