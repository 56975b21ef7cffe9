"""Forgeries of a SQLite ledger, made around the interface with plain sqlite3 (and evq's
own sealing code, as a forger with evq installed would): what the chain must catch. The
append-only guards are dropped for the edit and put back after it, so that only the
chain can tell. Another engine brings its own forger with the same methods."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

from evq.ledger.sqlite import seals
from evq.ledger.sqlite.tx import Tx

_GUARDS = (("evq_events_no_update", "UPDATE"), ("evq_events_no_delete", "DELETE"))
_COLUMNS = "position, at, kind, job_id, queue, job, attempt, worker, data, v"


class SqliteForger:
    def __init__(self, place: str) -> None:
        self.place = place

    @contextlib.contextmanager
    def _around_the_guards(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.place, isolation_level=None)
        try:
            for name, _ in _GUARDS:
                conn.execute(f"DROP TRIGGER {name}")
            yield conn
            for name, action in _GUARDS:
                conn.execute(f"CREATE TRIGGER {name} BEFORE {action} ON evq_events "
                             "BEGIN SELECT RAISE(ABORT, 'evq:append_only'); END")
        finally:
            conn.close()

    def edit_payload(self, job_id: str, payload: Any) -> int:
        """Change what a job's enqueue event says its payload was; its position."""
        with self._around_the_guards() as conn:
            conn.execute("UPDATE evq_events SET data = json_set(data, '$.payload', json(?)) "
                         "WHERE job_id = ? AND kind = 'enqueue'", (json.dumps(payload), job_id))
            return int(conn.execute("SELECT position FROM evq_events WHERE job_id = ? AND "
                                    "kind = 'enqueue'", (job_id,)).fetchone()[0])

    def erase_job(self, job_id: str) -> list[tuple[Any, ...]]:
        """Remove every event of a (deleted) job, as if it had never been; the rows."""
        with sqlite3.connect(self.place) as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM evq_events WHERE job_id = ? "
                                "ORDER BY position", (job_id,)).fetchall()
        with self._around_the_guards() as conn:
            conn.execute("DELETE FROM evq_events WHERE job_id = ?", (job_id,))
            conn.execute("DELETE FROM evq_deleted_jobs WHERE id = ?", (job_id,))
        return rows

    def keep_hashes(self, rows: list[tuple[Any, ...]], archive_position: int) -> None:
        """Keep the true hashes of erased events, as a real archive event would."""
        with sqlite3.connect(self.place) as conn:
            conn.executemany("INSERT INTO evq_archived VALUES (?, ?, ?)",
                             [(row[0], seals.event_hash(row), archive_position)
                              for row in rows])

    def append_sealed(self, kind: str, data: dict[str, Any], at: float) -> int:
        """Append one event and a good seal for it; its position."""
        conn = sqlite3.connect(self.place, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            tx = Tx(conn, at)
            position = tx.append(kind, data=data)
            tx.seal()
            conn.execute("COMMIT")
        finally:
            conn.close()
        return position

    def edit_seal(self, position: int, field: str) -> None:
        """Change one field (at, worker or job) of the seal at `position`."""
        change = {"at": "at = at + 100", "worker": "worker = 'mallory'",
                  "job": "job = 'pay'"}[field]
        with self._around_the_guards() as conn:
            conn.execute(f"UPDATE evq_events SET {change} WHERE position = ?", (position,))
