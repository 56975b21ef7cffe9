"""Replay on PostgreSQL: a ledger's events folded again into a scratch ledger on the same
server, inside one transaction that is always rolled back, and the rebuilt projection
compared with the stored one, table by table, by the server. The transaction reads one
snapshot of the ledger (REPEATABLE READ), so workers can go on writing beside it.

The scratch ledger is the schema `evq_scratch_replay`, made once per database (and again
when evq's schema version changes) and always empty as committed: every replay writes
into it only inside its own transaction, which it rolls back. Two replays at once take
turns on its rows. It holds nothing; dropping it is always safe."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql as pgsql

from ..audit_records import ReplayCheck
from ..sqlite import sql as named
from . import schema, sql
from .dialect import Dialect, scalar
from .tx import refusal_text, refused_position

_CHUNK = 20_000
SCRATCH = "evq_scratch_replay"


def _make_scratch(conn: Dialect) -> None:
    """Make (or remake, for another schema version) the empty scratch ledger."""
    raw = conn.raw
    raw.execute(sql.BEGIN_WRITE)
    try:
        raw.execute(sql.LOCK_MIGRATIONS, (_SCRATCH_KEY,))
        found = None
        if scalar(raw.execute(sql.LEDGER_IN_SCHEMA, (f"{SCRATCH}.evq_meta",))) is not None:
            found = raw.execute(sql.SCRATCH_VERSION).fetchone()
        if found is None or found[0] != str(schema.LATEST_VERSION):
            name = pgsql.Identifier(SCRATCH)
            raw.execute(pgsql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(name))
            raw.execute(pgsql.SQL("CREATE SCHEMA {}").format(name))
            raw.execute(sql.SET_LOCAL_SEARCH_PATH, (SCRATCH,))
            raw.execute(schema.SCHEMA.encode())
        raw.execute(sql.COMMIT)
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            raw.execute(sql.ROLLBACK)
        raise


_SCRATCH_KEY = int.from_bytes(hashlib.sha256(b"evq:scratch-replay").digest()[:8], "big",
                              signed=True)


def check(conn: Dialect, source: str,
          progress: Callable[[int, int], None] | None = None) -> ReplayCheck:
    """Replay every event of the ledger in schema `source` and compare projections;
    `progress(replayed up to, head)` hears after each chunk, before the comparison."""
    raw = conn.raw
    _make_scratch(conn)
    raw.execute(sql.BEGIN_SNAPSHOT)
    try:
        raw.execute(sql.SET_LOCAL_SEARCH_PATH, (SCRATCH,))
        last = 2**62  # the statements take an upper bound: here, every event
        src = pgsql.Identifier(source)
        head = int(scalar(raw.execute(pgsql.SQL(sql.REPLAY_HEAD).format(source=src),
                                      (last,))))
        done, count = 0, 0
        replay_range = pgsql.SQL(sql.REPLAY_RANGE).format(source=src)
        while done < head:
            upper = min(head, done + _CHUNK)
            try:
                count += raw.execute(replay_range, (done, upper)).rowcount
            except psycopg.Error as exc:
                refused = refusal_text(exc)
                if refused is None:
                    raise
                return ReplayCheck(0, [], [], refused_position(exc), refused)
            done = upper
            if progress is not None:
                progress(done, head)
        raw.execute(pgsql.SQL(sql.COPY_KEPT_HASHES_FROM).format(source=src), (last,))
        rebuilt_only: list[tuple[Any, ...]] = []
        stored_only: list[tuple[Any, ...]] = []
        for table, columns in named.PROJECTIONS.items():
            parts = {"rebuilt": pgsql.Identifier(SCRATCH, table),
                     "stored": pgsql.Identifier(source, table),
                     "columns": pgsql.SQL(columns)}
            rebuilt_only += [(table, *row) for row in raw.execute(
                pgsql.SQL(sql.ONLY_IN_FIRST).format(
                    first=parts["rebuilt"], second=parts["stored"],
                    columns=parts["columns"]))]
            stored_only += [(table, *row) for row in raw.execute(
                pgsql.SQL(sql.ONLY_IN_FIRST).format(
                    first=parts["stored"], second=parts["rebuilt"],
                    columns=parts["columns"]))]
        return ReplayCheck(count, rebuilt_only, stored_only)
    finally:
        if not raw.closed:
            with contextlib.suppress(psycopg.Error):
                raw.execute(sql.ROLLBACK)
