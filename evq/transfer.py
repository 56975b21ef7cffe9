"""Export and import of a ledger as JSON lines, losslessly: one object per event with its
exact stored data text and float timestamp, so that an imported ledger has the same
events, the same hash chain and (rebuilt through the same transitions) the same state.
An `archive` event's line also carries `archived_hashes`, the [position, hash] pairs the
ledger kept of the events that archive removed, so that the imported ledger verifies
exactly as its source does."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import InvalidInput, LedgerError
from .ledger import chain, connection, sql

FIELDS = ("position", "at", "kind", "job_id", "queue", "job", "attempt", "worker", "data", "v")
KEPT = "archived_hashes"
_CHUNK = 2000


def export_lines(conn: sqlite3.Connection) -> Iterator[str]:
    """Every event as one JSON line, oldest first, read in short transactions."""
    after = 0
    while True:
        rows = conn.execute(sql.EVENTS_AFTER, (after, _CHUNK)).fetchall()
        for row in rows:
            event = dict(zip(FIELDS, row, strict=True))
            if row[2] == "archive":
                event[KEPT] = [list(kept) for kept in
                               conn.execute(sql.KEPT_HASHES_OF_ARCHIVE, (row[0],))]
            yield json.dumps(event, ensure_ascii=False)
        if len(rows) < _CHUNK:
            return
        after = rows[-1][0]


def import_lines(target: str | Path, lines: Iterable[str]) -> int:
    """Load exported events into a new ledger through the same transitions as the write
    path (so illegal histories are refused), all in one transaction. Returns the count."""
    path = Path(target)
    if path.exists() and path.stat().st_size > 0:
        raise LedgerError(f"{path} already exists; import writes a new ledger")
    conn = connection.connect(path)
    done = False
    try:
        connection.migrate(conn)
        conn.execute(sql.BEGIN_IMMEDIATE)
        count = 0
        try:
            for number, text in enumerate(lines, start=1):
                if not text.strip():
                    continue
                row, kept = _row(text, number)
                try:
                    conn.execute(sql.IMPORT_EVENT, row)
                    conn.executemany(sql.KEEP_HASH, ((p, h, row[0]) for p, h in kept))
                except sqlite3.IntegrityError as exc:
                    raise LedgerError(
                        f"line {number} (position {row[0]}, kind {row[2]}) is refused by "
                        f"the ledger's transitions ({exc}): the history is not valid; "
                        "nothing was imported") from None
                count += 1
            conn.execute(sql.COMMIT)
            done = True
        except BaseException:
            conn.execute(sql.ROLLBACK)
            raise
    finally:
        conn.close()
        if not done:  # leave nothing behind: no half-made ledger
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    return count


def _row(text: str, number: int) -> tuple[tuple[Any, ...], list[tuple[int, str]]]:
    """An exported line: the event row, and the hashes kept of what it archived."""
    try:
        event = json.loads(text)
        row = tuple(event[field] for field in FIELDS)
        kept = [(int(position), str(digest)) for position, digest in event.get(KEPT, [])]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"line {number} is not an exported evq event: {exc}") from None
    if not isinstance(row[8], str):
        raise InvalidInput(f"line {number}: data must be the stored JSON text")
    return row, kept


def verify_import(path: str | Path) -> chain.ChainCheck:
    conn = connection.connect(path, read_only=True)
    try:
        return chain.check(conn)
    finally:
        conn.close()
