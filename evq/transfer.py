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

from . import files
from .errors import InvalidInput
from .ledger import records
from .ledger.sqlite import chain, connection, sql

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


def export_file(conn: sqlite3.Connection, target: str | Path,
                file_mode: int = files.FILE_MODE) -> int:
    """Write every event to a new file `target` (never replacing one), whole or not at
    all; returns the count."""
    with files.written_whole(target, "export", file_mode) as temporary, \
            open(temporary, "w", encoding="utf-8") as out:
        return sum(out.write(line + "\n") > 0 for line in export_lines(conn))


def import_lines(target: str | Path, lines: Iterable[str],
                 file_mode: int = files.FILE_MODE) -> int:
    """Load exported events into a new ledger through the same transitions as the write
    path (so illegal histories are refused), all in one transaction, and check its hash
    chain. The ledger is built under a temporary name and appears at `target` only if
    all of it was accepted: a refused import leaves nothing. Returns the count."""
    with files.written_whole(target, "import", file_mode, database=True) as temporary:
        conn = connection.connect(temporary, file_mode=file_mode)
        try:
            count = _load(conn, lines)
            found = _check_chain(conn)
        finally:
            conn.close()
        if not found.ok:
            raise InvalidInput(
                f"the imported events' hash chain is broken at position {found.position}: "
                f"{found.problem}; nothing was imported")
    return count


def _load(conn: sqlite3.Connection, lines: Iterable[str]) -> int:
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
                raise InvalidInput(
                    f"line {number} (position {row[0]}, kind {row[2]}) is refused by "
                    f"the ledger's transitions ({exc}): the history is not valid; "
                    "nothing was imported") from None
            except (sqlite3.InterfaceError, sqlite3.ProgrammingError, OverflowError) as exc:
                raise InvalidInput(f"line {number} cannot be stored ({exc}): nothing was "
                                   "imported") from None
            count += 1
        conn.execute(sql.COMMIT)
    except BaseException:
        conn.execute(sql.ROLLBACK)
        raise
    return count


def _check_chain(conn: sqlite3.Connection) -> records.ChainCheck:
    return chain.check(conn)


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
    try:
        json.loads(row[8])
    except ValueError as exc:
        raise InvalidInput(f"line {number}: data is not JSON text ({exc}); nothing was "
                           "imported") from None
    return row, kept

