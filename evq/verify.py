"""What `evq verify` checks of a ledger, and the report it prints: the storage is sound
(for a SQLite file, SQLite's integrity check), the append-only rules are in place, the
hash chain holds (with the archive files given), and replaying every event gives the
stored state. The ledger checks (`Ledger.verify`); this module judges and words it.

Three outcomes: `FAILED` (something does not hold: the report names it, by position
where there is one), `UNCHECKED` (nothing failed, but some archived events, or commits
sealed before schema 4 over archived events, could only be checked with archive files
that were not given) and `OK` (everything was checked)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs

from . import archive as archiving
from .ledger import Ledger, audit_records


class Outcome(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    UNCHECKED = "unchecked"


@attrs.frozen
class Report:
    outcome: Outcome
    lines: list[str]
    chain: audit_records.ChainCheck | None = None


def verify_ledger(ledger: Ledger, expect_head: str | None = None,
                  archives: Iterable[str | Path] = (),
                  progress: Callable[[str, int, int], None] | None = None) -> Report:
    """Check `ledger` (see the module docstring); `progress(stage, done, total)` hears how
    far it has got (see `Ledger.verify`)."""
    files = archiving.read_files(archives)
    checked = ledger.verify(expect_head, files, progress=progress)
    if checked.damage or checked.chain is None or checked.replay is None:
        return _damaged(checked)
    found, rebuilt = checked.chain, checked.replay
    problems = []
    if checked.rules_off:
        problems.append(f"the append-only rule is off: trigger(s) "
                        f"{', '.join(checked.rules_off)} were dropped")
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


def _passed(found: audit_records.ChainCheck) -> Report:
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


def _damaged(checked: audit_records.LedgerCheck) -> Report:
    lines = ["DAMAGED", f"the file is damaged: {checked.checked_by} says:"]
    lines += [f"  {line}" for line in checked.damage[:20]]
    if checked.damaged_parts:
        lines.append("damaged tables:")
        lines += [f"  {table}" for table in checked.damaged_parts]
    lines.append("restore the ledger from a backup (evq export / import) and verify that; "
                 "`evq export` may still read the events that are intact")
    return Report(Outcome.FAILED, lines)
