"""Export and import of a ledger as JSON lines, losslessly: one object per event with its
exact stored data text and float timestamp, so that an imported ledger has the same
events, the same hash chain and (rebuilt through the same transitions) the same state."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import InvalidInput, LedgerError
from .ledger import connection, seals, sql

FIELDS = ("position", "at", "kind", "job_id", "queue", "job", "attempt", "worker", "data", "v")
_CHUNK = 2000


def export_lines(conn: sqlite3.Connection) -> Iterator[str]:
    """Every event as one JSON line, oldest first, read in short transactions."""
    after = 0
    while True:
        rows = conn.execute(sql.EVENTS_AFTER, (after, _CHUNK)).fetchall()
        for row in rows:
            yield json.dumps(dict(zip(FIELDS, row, strict=True)), ensure_ascii=False)
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
                row = _row(text, number)
                try:
                    conn.execute(sql.IMPORT_EVENT, row)
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


def _row(text: str, number: int) -> tuple[Any, ...]:
    try:
        event = json.loads(text)
        row = tuple(event[field] for field in FIELDS)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"line {number} is not an exported evq event: {exc}") from None
    if not isinstance(row[8], str):
        raise InvalidInput(f"line {number}: data must be the stored JSON text")
    return row


def verify_import(path: str | Path) -> seals.ChainCheck:
    conn = connection.connect(path, read_only=True)
    try:
        return seals.verify(conn)
    finally:
        conn.close()
