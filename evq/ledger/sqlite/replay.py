"""Replay: rebuild the projection from the events, through the very triggers the write path
uses, and compare it with the stored one."""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ... import files
from ...errors import LedgerCorrupt
from ..audit_records import ReplayCheck
from . import chain, connection, seals, sql

Progress = Callable[[int, int], None]
_CHUNK = 20_000


def replay_into(source: str | Path, target: str | Path, upto: int | None = None,
                progress: Progress | None = None,
                archived: dict[int, tuple[Any, ...]] | None = None,
                file_mode: int = files.FILE_MODE, upto_at: float | None = None) -> int:
    """Create a fresh ledger at `target` holding the events of `source` up to position
    `upto` (all by default) and before the first one stamped after `upto_at`, with the
    projection rebuilt from them. Returns the number of events replayed;
    `progress(done, total)` hears about long replays as they go.
    `archived` (position -> event row, from archive files) are put back in their places.
    The new ledger is built under a temporary name and appears at `target` only when
    complete; `target` must not exist, and a refused replay leaves nothing."""
    with files.written_whole(target, "replay", file_mode, database=True) as temporary:
        conn = connection.connect(temporary, file_mode=file_mode)
        try:
            # Built in one go under a name nobody opens: no journal and no syncs (a
            # WAL the size of the ledger slows every page read as it grows), then made
            # an ordinary WAL ledger and synced once, before it takes its name.
            for pragma in sql.BUILD_PRAGMAS:
                conn.execute(pragma)
            if archived:
                count = _replay_merged(conn, source, upto, archived, upto_at)
            else:
                done = _replay(conn, source, upto, progress=progress, upto_at=upto_at)
                if done.refused_at is not None:  # refused before finishing the file
                    raise LedgerCorrupt(
                        f"replaying {source} refused event {done.refused_at} "
                        f"({done.refusal}): its history holds a transition that cannot "
                        "happen (see `evq verify`); nothing was written")
                count = done.events
            for pragma in sql.BUILT_PRAGMAS:
                conn.execute(pragma)
        finally:
            conn.close()
        files.sync(temporary)
        return count


def _replay(conn: sqlite3.Connection, source: str | Path, upto: int | None,
            compare: bool = False, progress: Progress | None = None,
            upto_at: float | None = None) -> ReplayCheck:
    connection.migrate(conn)
    conn.execute(sql.ATTACH_SOURCE, (str(source),))
    # A deferred transaction: one read snapshot of the source (workers keep writing
    # beside it), so the comparison sees exactly the events it replayed.
    conn.execute(sql.BEGIN)
    last = upto if upto is not None else 2**62
    try:
        head = conn.execute(sql.SOURCE_HEAD, (last,)).fetchone()[0]
        count, done = 0, 0
        while done < head:  # in chunks, one transaction: progress on long ledgers
            upper = min(head, done + _CHUNK)
            if upto_at is not None:
                # The cut is before the first event stamped after upto_at, even when an
                # older ledger's times are out of order (each chunk is read again, hot).
                later = conn.execute(sql.SOURCE_FIRST_AFTER_TIME,
                                     (done, upper, upto_at)).fetchone()[0]
                if later is not None:
                    upper = head = last = int(later) - 1
            count += conn.execute(sql.REPLAY_EVENTS, (done, upper)).rowcount
            done = upper
            if progress is not None:
                progress(done, head)
        conn.execute(sql.COPY_KEPT_HASHES, (last,))
    except sqlite3.IntegrityError:
        conn.execute(sql.ROLLBACK)
        position, reason = _first_refused(conn, last)
        conn.execute(sql.DETACH_SOURCE)
        return ReplayCheck(0, [], [], position, reason)
    try:
        rebuilt_only: list[tuple[Any, ...]] = []
        stored_only: list[tuple[Any, ...]] = []
        if compare:
            for table, columns in sql.PROJECTIONS.items():
                rebuilt_only += [(table, *r) for r in conn.execute(
                    sql.PROJECTION_ONLY_IN_MAIN.format(table=table, columns=columns))]
                stored_only += [(table, *r) for r in conn.execute(
                    sql.PROJECTION_ONLY_IN_SOURCE.format(table=table, columns=columns))]
        conn.execute(sql.COMMIT)
    except BaseException:
        conn.execute(sql.ROLLBACK)
        raise
    conn.execute(sql.DETACH_SOURCE)
    return ReplayCheck(count, rebuilt_only, stored_only)


def _replay_merged(conn: sqlite3.Connection, source: str | Path, upto: int | None,
                   archived: dict[int, tuple[Any, ...]], upto_at: float | None = None
                   ) -> int:
    """Replay the ledger's events and archived ones together, in position order."""
    connection.migrate(conn)
    conn.execute(sql.ATTACH_SOURCE, (str(source),))
    last = upto if upto is not None else 2**62
    conn.execute(sql.BEGIN)
    try:
        if upto_at is not None:  # the first event after upto_at, live or archived, cuts
            live = conn.execute(sql.SOURCE_FIRST_AFTER_TIME, (0, last, upto_at)).fetchone()[0]
            later = [p for p, row in archived.items() if p <= last and row[1] > upto_at]
            if live is not None:
                later.append(int(live))
            if later:
                last = min(later) - 1
        pending = sorted(p for p in archived if p <= last)
        count, after = 0, 0
        while True:
            rows = conn.execute(sql.SOURCE_EVENTS_AFTER, (after, last, 5000)).fetchall()
            for row in rows:
                while pending and pending[0] < row[0]:
                    conn.execute(sql.IMPORT_EVENT, archived[pending.pop(0)])
                    count += 1
                conn.execute(sql.IMPORT_EVENT, row)
                count += 1
            if len(rows) < 5000:
                break
            after = rows[-1][0]
        for position in pending:
            conn.execute(sql.IMPORT_EVENT, archived[position])
            count += 1
        _keep_restored_hashes(conn, last, archived)
        conn.execute(sql.COMMIT)
    except sqlite3.IntegrityError as exc:
        conn.execute(sql.ROLLBACK)
        raise LedgerCorrupt(
            f"replaying {source} with its archived events was refused ({exc}): that "
            "history holds a transition that cannot happen (see `evq verify`); nothing "
            "was written") from None
    except BaseException:
        conn.execute(sql.ROLLBACK)
        raise
    conn.execute(sql.DETACH_SOURCE)
    return count


def _keep_restored_hashes(conn: sqlite3.Connection, last: int,
                          archived: dict[int, tuple[Any, ...]]) -> None:
    """Events put back where an `archive` event says it removed them carry their kept
    hash along (how verify tells them from a false claim); archives written before
    schema 4 kept none, so theirs is computed from the event put back."""
    conn.execute(sql.COPY_KEPT_HASHES, (last,))
    try:
        claims = chain.read_claims(conn.execute(sql.SOURCE_ARCHIVE_EVENTS, (last,)))
    except chain.ChainError:
        return  # a forged archive event: verify names it
    for claim in claims:
        for low, high in claim.ranges:
            for position in range(low, high + 1):
                if position in archived:
                    conn.execute(sql.KEEP_HASH_IF_NEW, (
                        position, seals.event_hash(archived[position]), claim.position))


def _first_refused(conn: sqlite3.Connection, last: int) -> tuple[int | None, str]:
    """Replay one event at a time to name the first one the transitions refuse."""
    conn.execute(sql.BEGIN)
    try:
        positions = [row[0] for row in conn.execute(sql.SOURCE_POSITIONS, (last,))]
        for position in positions:
            try:
                conn.execute(sql.REPLAY_ONE_EVENT, (position,))
            except sqlite3.IntegrityError as exc:
                return position, str(exc)
        return None, "refused, but no single event was"
    finally:
        conn.execute(sql.ROLLBACK)


class Stopped(Exception):
    """A replay check asked to stop (its caller gave up: see `check`)."""


def check(source: str | Path, stop: threading.Event | None = None,
          progress: Progress | None = None) -> ReplayCheck:
    """Replay every event of `source` into a scratch file and compare with its stored
    projection. The scratch file (as big as the ledger) is in a private temporary
    directory, removed afterwards; written without a journal or syncs, with a small
    cache, so memory stays small whatever the ledger's size. Setting `stop` ends it at
    its next chunk (raising Stopped); `progress(replayed up to, head)` hears after each
    chunk, before the comparison."""
    with tempfile.TemporaryDirectory(prefix="evq-verify-") as scratch:
        conn = sqlite3.connect(Path(scratch) / "replayed.db", isolation_level=None)
        try:
            for pragma in sql.SCRATCH_PRAGMAS:
                conn.execute(pragma)
            return _replay(conn, source, None, compare=True,
                           progress=progress if stop is None else _until(stop, progress))
        finally:
            conn.close()


def _until(stop: threading.Event, then: Progress | None) -> Progress:
    def progress(done: int, total: int) -> None:
        if stop.is_set():
            raise Stopped(f"stopped after {done} of {total} events")
        if then is not None:
            then(done, total)
    return progress
