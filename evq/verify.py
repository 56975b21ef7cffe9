"""What `evq verify` checks of a ledger file, and the report it prints: the file is sound
(SQLite's integrity check), the append-only triggers are in place, the hash chain holds
(ledger/sqlite/chain.py, with the archive files given), and replaying every event gives the
stored state.

Three outcomes: `FAILED` (something does not hold: the report names it, by position
where there is one), `UNCHECKED` (nothing failed, but some archived events, or commits
sealed before schema 4 over archived events, could only be checked with archive files
that were not given) and `OK` (everything was checked)."""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import attrs

from . import archive as archiving
from . import audit
from .errors import LedgerCorrupt, LedgerError
from .ledger import records
from .ledger.sqlite import chain, failures, replay, sql

_GUARDS = ("evq_archived_no_delete", "evq_archived_no_update", "evq_events_no_delete",
           "evq_events_no_update")


class Outcome(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    UNCHECKED = "unchecked"


@attrs.frozen
class Report:
    outcome: Outcome
    lines: list[str]
    chain: records.ChainCheck | None = None


def verify_ledger(path: str | Path, expect_head: str | None = None,
                  archives: Iterable[str | Path] = ()) -> Report:
    """Check the ledger at `path` (see the module docstring)."""
    files = archiving.read_files(archives)
    try:
        conn = audit.open_ledger(path)
    except LedgerError as exc:
        if _is_damage(exc):
            return _damaged([str(exc.__cause__ or exc)], [])
        raise
    try:
        damage = _integrity(conn)
        if damage:
            return _damaged(damage, _damaged_tables(conn))
        guards = {row[0] for row in conn.execute(sql.GUARD_TRIGGERS)}
        found = chain.check(conn, expect_head, files)
    except sqlite3.DatabaseError as exc:
        if _is_damage(exc):
            return _damaged([str(exc)], _damaged_tables(conn))
        raise failures.ledger_error(exc, path, "verifying") from exc
    finally:
        conn.close()
    try:
        rebuilt = replay.check(path)
    except sqlite3.DatabaseError as exc:
        raise failures.ledger_error(exc, path, "replaying") from exc
    problems = []
    missing = set(_GUARDS) - guards
    if missing:
        problems.append(f"the append-only rule is off: trigger(s) {', '.join(sorted(missing))} "
                        "were dropped")
    if not found.ok:
        where = "" if found.position is None else f" at position {found.position}"
        problems.append(f"hash chain broken{where}: {found.problem}")
    if rebuilt.refused_at is not None:
        problems.append(f"replay refused event {rebuilt.refused_at} ({rebuilt.refusal}): the "
                        "history holds a transition that cannot happen")
    elif not rebuilt.ok:
        problems.append(f"replaying {rebuilt.events} events does not give the stored state:")
        problems += [f"  stored, not rebuilt:  {row}" for row in rebuilt.only_stored[:20]]
        problems += [f"  rebuilt, not stored:  {row}" for row in rebuilt.only_rebuilt[:20]]
    if problems:
        return Report(Outcome.FAILED, ["MISMATCH", *problems], found)
    return _passed(found)


def _passed(found: records.ChainCheck) -> Report:
    holds = "holds wherever it could be recomputed (see below)" if found.blind else "holds"
    lines = [f"ok: {found.events} events ({found.seals} of them seals); the hash chain "
             f"{holds}, the ledger is append-only, and replay equals the stored state"]
    if found.checked:
        lines.append(f"archived: {found.checked} events checked against their archive files")
    if found.unchecked:
        lines.append(f"not checked: {found.unchecked_events} archived events (positions "
                     f"{spans(found.unchecked)}): pass their archive files with --archive")
    if found.blind:
        commits = ", ".join(f"{seal} (events {first}..{seal - 1})"
                            for first, seal in found.blind[:20])
        more = f" and {len(found.blind) - 20} more" if len(found.blind) > 20 else ""
        lines.append(f"not checked: the commits sealed at {commits}{more}: sealed by an evq "
                     "older than schema 4, they cover archived events and can only be "
                     "recomputed with their archive files (--archive)")
    for archive_event, claimed in found.after_head:
        lines.append(f"note: the archive event at {archive_event}, after the expected head, "
                     f"removed positions {spans(claimed)}, which are at or before it; "
                     "their content is checked only with that archive file")
    lines.append(f"head: {found.head}")
    return Report(Outcome.OK if found.complete else Outcome.UNCHECKED, lines, found)


def spans(ranges: Iterable[tuple[int, int]], most: int = 20) -> str:
    """Position ranges as people read them: `3..7, 12, 15..16`."""
    listed = list(ranges)
    text = ", ".join(str(low) if low == high else f"{low}..{high}" for low, high in
                     listed[:most])
    return text + (f" and {len(listed) - most} more ranges" if len(listed) > most else "")


def _integrity(conn: sqlite3.Connection) -> list[str]:
    """What SQLite's integrity check finds wrong with the file (nothing: [])."""
    try:
        found = [str(row[0]) for row in conn.execute(sql.INTEGRITY_CHECK)]
    except sqlite3.DatabaseError as exc:
        if not _is_damage(exc):
            raise
        return [str(exc)]
    return [] if found == ["ok"] else found


def _damaged_tables(conn: sqlite3.Connection) -> list[str]:
    """Each table whose own check fails, with what SQLite says of it."""
    try:
        tables = [row[0] for row in conn.execute(sql.TABLE_NAMES)]
    except sqlite3.DatabaseError as exc:
        return [f"the schema table (sqlite_master): {exc}"]
    damaged = []
    for table in tables:
        try:
            said = [str(row[0]) for row in conn.execute(sql.TABLE_QUICK_CHECK.format(
                table=table.replace('"', '""')))]
        except sqlite3.DatabaseError as exc:
            said = [str(exc)]
        if said != ["ok"]:
            damaged.append(f"{table}: {'; '.join(said[:3])}")
    return damaged


def _damaged(found: list[str], tables: list[str]) -> Report:
    lines = ["DAMAGED", "the file is damaged: SQLite's integrity check says:"]
    lines += [f"  {line}" for line in found[:20]]
    if tables:
        lines.append("damaged tables:")
        lines += [f"  {table}" for table in tables]
    lines.append("restore the ledger from a backup (evq export / import) and verify that; "
                 "`evq export` may still read the events that are intact")
    return Report(Outcome.FAILED, lines)


def _is_damage(exc: BaseException) -> bool:
    """Whether an error says the file's pages are damaged (not: it is no database)."""
    if isinstance(exc, LedgerCorrupt) and not isinstance(exc.__cause__, sqlite3.Error):
        return True
    cause = exc if isinstance(exc, sqlite3.Error) else exc.__cause__
    code = getattr(cause, "sqlite_errorcode", 0) & 0xFF
    return code == sqlite3.SQLITE_CORRUPT
