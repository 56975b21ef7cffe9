"""The looking-after side of the SQLite engine: verify a file (SQLite's integrity check,
the append-only triggers, the hash chain, replay), replay into a new file, create or
upgrade the schema, and the operator's actions (retry, cancel, delete), each in one
transaction of its own without the runtime's writer.

Verify's progress is told on the thread that called it, stage after stage; the replay,
which runs beside the chain walk, only leaves its latest figures for that thread."""

from __future__ import annotations

import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import partial
from typing import Any, TypeVar

from ...errors import InvalidInput, LedgerCorrupt, LedgerError, LedgerFull
from ..audit_records import ArchiveFile, LedgerCheck, ReplayCheck
from ..interface import Ledger
from ..records import Stopped
from . import chain, connection, ops, replay, schema, sql, stalls
from .base import EngineBase
from .failures import ledger_error
from .tx import Tx

T = TypeVar("T")
VerifyProgress = Callable[[str, int, int], None]
_CHECKED_BY = "SQLite's integrity check"
_TELL_EVERY = 0.25  # seconds between the replay's figures told while verify waits for it
_GUARDS = ("evq_archived_no_delete", "evq_archived_no_update", "evq_events_no_delete",
           "evq_events_no_update")


class AdminSide(EngineBase):
    """Verify, replay, migrate, and the operator's writes."""

    # --- verify and replay -----------------------------------------------------------------
    def verify(self, expect_head: str | None = None, archives: Sequence[ArchiveFile] = (),
               *, progress: VerifyProgress | None = None) -> LedgerCheck:
        try:
            conn = connection.connect(self.path, read_only=True,
                                      busy_timeout_ms=self.busy_timeout_ms)
            try:
                connection.require_schema(conn, self.path)
            except BaseException:
                conn.close()
                raise
        except LedgerError as exc:
            if _is_damage(exc):
                return LedgerCheck(_CHECKED_BY, damage=(str(exc.__cause__ or exc),))
            raise
        stop = threading.Event()  # set as verify ends: a replay still going stops
        with ThreadPoolExecutor(1, thread_name_prefix="evq-verify") as beside:
            try:
                return self._verify(conn, expect_head, archives, progress, beside, stop)
            finally:  # damage, an error, Ctrl-C: the replay stops at its next chunk
                stop.set()

    def _verify(self, conn: sqlite3.Connection, expect_head: str | None,
                archives: Sequence[ArchiveFile], progress: VerifyProgress | None,
                beside: ThreadPoolExecutor, stop: threading.Event) -> LedgerCheck:
        latest = _Latest()
        try:
            head = 0
            if progress is not None:
                head = _head(conn)
                progress("storage", 0, head)
            damage = _integrity(conn)
            if damage:
                return LedgerCheck(_CHECKED_BY, tuple(damage), _damaged_tables(conn))
            if progress is not None:
                progress("storage", head, head)
            # The replay runs in SQLite (which lets go of the GIL) while this thread
            # walks the chain in Python: on two cores, the two take turns less.
            replayed = beside.submit(self._check_replay, stop,
                                     None if progress is None else latest)
            guards = {row[0] for row in conn.execute(sql.GUARD_TRIGGERS)}
            found = chain.check(conn, expect_head, archives, stage(progress, "hash chain"))
        except sqlite3.DatabaseError as exc:
            if _is_damage(exc):
                return LedgerCheck(_CHECKED_BY, (str(exc),), _damaged_tables(conn))
            raise ledger_error(exc, self.path, "verifying", self.busy_timeout) from exc
        finally:
            conn.close()
        rules_off = tuple(sorted(set(_GUARDS) - guards))
        return LedgerCheck(_CHECKED_BY, rules_off=rules_off, chain=found,
                           replay=_replay_told(replayed, latest, progress))

    def check_replay(self) -> ReplayCheck:
        return self._check_replay(None)

    def _check_replay(self, stop: threading.Event | None,
                      progress: replay.Progress | None = None) -> ReplayCheck:
        try:
            return replay.check(self.path, stop, progress)
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL:
                # Only the scratch file is written: the ledger is read, never changed.
                raise LedgerFull(
                    f"verify's replay check ran out of space in the temporary directory "
                    f"{tempfile.gettempdir()}: it needs about the size of {self.path} "
                    "there; point TMPDIR at a larger directory. The ledger is unchanged"
                ) from None
            raise ledger_error(exc, self.path, "replaying", self.busy_timeout) from exc

    def replay_into(self, target: Ledger, upto: int | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    archived: Mapping[int, tuple[Any, ...]] | None = None,
                    upto_at: float | None = None) -> int:
        if not isinstance(target, EngineBase):
            raise InvalidInput(f"cannot replay {self.location} into {target.location}: "
                               "replay writes a new ledger of the same kind (a SQLite file)")
        try:
            return replay.replay_into(self.path, target.path, upto, progress,
                                      archived=dict(archived) if archived else None,
                                      file_mode=target.file_mode, upto_at=upto_at)
        except sqlite3.Error as exc:
            raise ledger_error(exc, self.path, "replaying", self.busy_timeout) from exc

    # --- the schema ------------------------------------------------------------------------
    def migrate(self) -> tuple[int, int]:
        return connection.migrate_file(self.path, self.file_mode)

    def schema_text(self) -> str:
        return schema.schema_sql()

    # --- the operator's actions ------------------------------------------------------------
    def retry_job(self, job_id: str, new_id: str, reason: str | None) -> str:
        return self._act(lambda tx: ops.retry(tx, job_id, new_id, reason))

    def cancel_job(self, job_id: str, reason: str | None) -> list[Stopped]:
        ended = self._act(lambda tx: ops.cancel(tx, job_id, reason))
        return [Stopped(job, running) for job, running in ended]

    def delete_job(self, job_id: str, reason: str | None) -> list[Stopped]:
        ended = self._act(lambda tx: ops.delete(tx, job_id, reason))
        return [Stopped(job, running) for job, running in ended]

    def run_now_job(self, job_id: str, reason: str | None) -> float:
        return self._act(lambda tx: ops.run_now(tx, job_id, reason))

    def pause_queue(self, queue: str, paused: bool, reason: str | None) -> None:
        self._act(lambda tx: ops.set_paused(tx, queue=queue, paused=paused, reason=reason))

    def _act(self, op: Callable[[Tx], T]) -> T:
        """`op` in one write transaction of its own, sealed; a wait for the write lock
        long enough to be a stall is recorded (see stalls.py)."""
        asked = time.monotonic()
        with connection.write_transaction(self.path, self.busy_timeout_ms) as conn:
            tx = Tx.locked(conn, time.time())  # read under the lock (see Tx.locked)
            if time.monotonic() - asked >= stalls.STALL:
                stalls.record(tx, time.monotonic() - asked)
            result = op(tx)
            tx.seal()
        return result


def stage(progress: VerifyProgress | None, name: str) -> Callable[[int, int], None] | None:
    """`progress` for one stage of verify: told (done, total) of the stage `name`."""
    return None if progress is None else partial(progress, name)


class _Latest:
    """The replay's latest (done, total), left by its thread for verify's to tell."""

    figures: tuple[int, int] | None = None

    def __call__(self, done: int, total: int) -> None:
        self.figures = (done, total)


def _replay_told(replayed: Future[ReplayCheck], latest: _Latest,
                 progress: VerifyProgress | None) -> ReplayCheck:
    """The replay check's result, once it is done, telling `progress` how far it has got
    now and then as it goes (on this thread, where the callback was given)."""
    if progress is None:
        return replayed.result()
    told = None
    while True:
        finished = not wait([replayed], _TELL_EVERY).not_done
        figures = latest.figures
        if figures is not None and figures != told:
            progress("replay", *figures)
            told = figures
        if finished:
            return replayed.result()


def _head(conn: sqlite3.Connection) -> int:
    """The newest position, for progress (0 when the file cannot say: the integrity check
    that follows says why)."""
    try:
        return int(conn.execute(sql.HEAD_POSITION).fetchone()[0])
    except sqlite3.DatabaseError:
        return 0


def _integrity(conn: sqlite3.Connection) -> list[str]:
    """What SQLite's integrity check finds wrong with the file (nothing: [])."""
    try:
        found = [str(row[0]) for row in conn.execute(sql.INTEGRITY_CHECK)]
    except sqlite3.DatabaseError as exc:
        if not _is_damage(exc):
            raise
        return [str(exc)]
    return [] if found == ["ok"] else found


def _damaged_tables(conn: sqlite3.Connection) -> tuple[str, ...]:
    """Each table whose own check fails, with what SQLite says of it."""
    try:
        tables = [row[0] for row in conn.execute(sql.TABLE_NAMES)]
    except sqlite3.DatabaseError as exc:
        return (f"the schema table (sqlite_master): {exc}",)
    damaged = []
    for table in tables:
        try:
            said = [str(row[0]) for row in conn.execute(sql.TABLE_QUICK_CHECK.format(
                table=table.replace('"', '""')))]
        except sqlite3.DatabaseError as exc:
            said = [str(exc)]
        if said != ["ok"]:
            damaged.append(f"{table}: {'; '.join(said[:3])}")
    return tuple(damaged)


def _is_damage(exc: BaseException) -> bool:
    """Whether an error says the file's pages are damaged (not: it is no database)."""
    if isinstance(exc, LedgerCorrupt) and not isinstance(exc.__cause__, sqlite3.Error):
        return True
    cause = exc if isinstance(exc, sqlite3.Error) else exc.__cause__
    code = getattr(cause, "sqlite_errorcode", 0) & 0xFF
    return code == sqlite3.SQLITE_CORRUPT
