"""Export and import of a ledger as JSON lines, losslessly: one object per event with its
exact stored data text and float timestamp, so that an imported ledger has the same
events, the same hash chain and (rebuilt through the same transitions) the same state.
An `archive` event's line also carries `archived_hashes`, the [position, hash] pairs the
ledger kept of the events that archive removed, so that the imported ledger verifies
exactly as its source does."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from . import files
from .errors import InvalidInput
from .ledger import Ledger
from .ledger.audit_records import Exported, StoredEvent

FIELDS = StoredEvent._fields  # position, at, kind, job_id, queue, job, attempt, worker, data, v
KEPT = "archived_hashes"


def export_lines(ledger: Ledger) -> Iterator[str]:
    """Every event as one JSON line, oldest first, read in short transactions."""
    for exported in ledger.export():
        event: dict[str, Any] = exported.event._asdict()
        if exported.event.kind == "archive":
            event[KEPT] = [list(kept) for kept in exported.kept]
        yield json.dumps(event, ensure_ascii=False)


def export_file(ledger: Ledger, target: str | Path, file_mode: int = files.FILE_MODE) -> int:
    """Write every event to a new file `target` (never replacing one), whole or not at
    all; returns the count."""
    with files.written_whole(target, "export", file_mode) as temporary, \
            open(temporary, "w", encoding="utf-8") as out:
        return sum(out.write(line + "\n") > 0 for line in export_lines(ledger))


def import_lines(ledger: Ledger, lines: Iterable[str]) -> int:
    """Load exported events into `ledger`, a new one, through the same transitions as
    the write path (so illegal histories are refused), all in one transaction, and check
    its hash chain. The ledger appears only if all of it was accepted: a refused import
    leaves nothing. Lines are read as they are loaded (memory stays bounded). Returns the
    count."""
    return ledger.import_(read_lines(lines))


def read_lines(lines: Iterable[str]) -> Iterator[Exported]:
    """Exported lines as events, skipping blank ones; InvalidInput names a bad line, and
    refuses an input with no event at all (what a failed export piped in looks like)."""
    found = False
    for number, text in enumerate(lines, start=1):
        if text.strip():
            found = True
            yield _row(text, number)
    if not found:
        raise InvalidInput(
            "the input holds no exported events (an export that failed, or an empty "
            "file?): nothing was imported and no ledger was made")


def _row(text: str, number: int) -> Exported:
    """An exported line: the event row, and the hashes kept of what it archived."""
    try:
        event = json.loads(text)
        row = StoredEvent._make(event[field] for field in FIELDS)
        kept = tuple((int(position), str(digest))
                     for position, digest in event.get(KEPT, []))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"line {number} is not an exported evq event: {exc}") from None
    if not isinstance(row.data, str):
        raise InvalidInput(f"line {number}: data must be the stored JSON text")
    try:
        json.loads(row.data)
    except ValueError as exc:
        raise InvalidInput(f"line {number}: data is not JSON text ({exc}); nothing was "
                           "imported") from None
    return Exported(row, kept, number)
