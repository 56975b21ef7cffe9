"""Forgeries of a PostgreSQL ledger, made around the interface with plain psycopg (and
evq's own sealing code, as a forger with evq installed would): the same edits as
sqlite_forger.py's, on the ledger's schema. The append-only triggers are disabled for the
edit and enabled again in the same transaction, so that only the chain can tell."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from evq.ledger.sqlite import seals

_GUARDS = ("evq_events_no_update", "evq_events_no_delete")
_COLUMNS = "position, at, kind, job_id, queue, job, attempt, worker, data, v"


def _split(place: str) -> tuple[str, str]:
    """(URL to connect with, schema) of a ledger URL: `?schema=` taken out of it."""
    parts = urlsplit(place)
    query = parse_qsl(parts.query)
    schemas = [value for key, value in query if key == "schema"]
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    return (urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)),
            schemas[-1] if schemas else "evq")


class PgForger:
    def __init__(self, place: str) -> None:
        self.place = place
        self.conninfo, self.schema = _split(place)

    @contextlib.contextmanager
    def _connected(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on the ledger's schema: committed if the block ends well."""
        with psycopg.connect(self.conninfo, connect_timeout=10) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(
                sql.Identifier(self.schema)))
            conn.execute("SET lock_timeout = '10s'")
            yield conn

    @contextlib.contextmanager
    def _around_the_guards(self) -> Iterator[psycopg.Connection[Any]]:
        with self._connected() as conn:
            for name in _GUARDS:
                conn.execute(sql.SQL("ALTER TABLE evq_events DISABLE TRIGGER {}").format(
                    sql.Identifier(name)))
            yield conn
            for name in _GUARDS:
                conn.execute(sql.SQL("ALTER TABLE evq_events ENABLE TRIGGER {}").format(
                    sql.Identifier(name)))

    def edit_payload(self, job_id: str, payload: Any) -> int:
        """Change what a job's enqueue event says its payload was; its position."""
        with self._around_the_guards() as conn:
            # jsonb reformats the whole text: the chain only has to see it changed.
            row = conn.execute(
                "UPDATE evq_events SET data = jsonb_set(data::jsonb, '{payload}', "
                "%s::jsonb)::text WHERE job_id = %s AND kind = 'enqueue' RETURNING position",
                (json.dumps(payload), job_id)).fetchone()
        assert row is not None, f"no enqueue event of {job_id}"
        return int(row[0])

    def erase_job(self, job_id: str) -> list[tuple[Any, ...]]:
        """Remove every event of a (deleted) job, as if it had never been; the rows."""
        with self._connected() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM evq_events WHERE job_id = %s "
                                "ORDER BY position", (job_id,)).fetchall()
        with self._around_the_guards() as conn:
            conn.execute("DELETE FROM evq_events WHERE job_id = %s", (job_id,))
            conn.execute("DELETE FROM evq_deleted_jobs WHERE id = %s", (job_id,))
        return [tuple(row) for row in rows]

    def keep_hashes(self, rows: list[tuple[Any, ...]], archive_position: int) -> None:
        """Keep the true hashes of erased events, as a real archive event would."""
        with self._connected() as conn, conn.cursor() as cursor:
            cursor.executemany("INSERT INTO evq_archived VALUES (%s, %s, %s)",
                               [(row[0], seals.event_hash(row), archive_position)
                                for row in rows])

    def append_sealed(self, kind: str, data: dict[str, Any], at: float) -> int:
        """Append one event and a good seal for it, at `at`; its position."""
        # The engine is imported here, not at the top: the SQLite half of the suite
        # imports this module too, and must not need the PostgreSQL engine.
        from evq.ledger.postgres.dialect import Dialect
        from evq.ledger.postgres.tx import PgTx
        from evq.ledger.postgres.url import parse

        with self._connected() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (parse(self.place).lock_key,))
            newest = conn.execute("SELECT max(position) FROM evq_events").fetchone()
            last = newest[0] if newest is not None and newest[0] is not None else 0
            tx = PgTx(Dialect(conn), at, None, int(last) + 1)
            position = tx.append(kind, data=data)
            tx.seal()
        return position

    def edit_seal(self, position: int, field: str) -> None:
        """Change one field (at, worker or job) of the seal at `position`."""
        change = {"at": "at = at + 100", "worker": "worker = 'mallory'",
                  "job": "job = 'pay'"}[field]
        with self._around_the_guards() as conn:
            conn.execute(f"UPDATE evq_events SET {change} WHERE position = %s", (position,))
