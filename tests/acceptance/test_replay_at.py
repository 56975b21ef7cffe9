"""`evq replay --at T` rebuilds the ledger as it stood at T: exactly the events stamped at
or before T, even when the processes that wrote it had clocks that disagreed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import evq
from evq.ledger import records
from evq.ledger.sqlite import connection, ops
from evq.ledger.sqlite.tx import Tx

T0 = 1_750_000_000.0


def stamps(db: Path) -> list[tuple[int, float]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT position, at FROM evq_events ORDER BY position").fetchall()
    finally:
        conn.close()


def replay_at(db: Path, moment: float, target: Path) -> list[tuple[int, float]]:
    when = datetime.fromtimestamp(moment, UTC).isoformat()
    done = subprocess.run([sys.executable, "-m", "evq", "replay", "--db", str(db), "--to",
                           str(target), "--at", when], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return stamps(target)


async def enqueue_at(db: Path, moment: float) -> None:
    async with evq.Context(db, clock=evq.FakeClock(moment)) as ctx:
        ctx.define("job", None)
        await ctx.enqueue("job")


async def test_replay_at_takes_exactly_the_events_stamped_by_then(tmp_path: Path):
    db = tmp_path / "ledger.db"
    await enqueue_at(db, T0)
    await enqueue_at(db, T0 + 200)  # a process whose clock is ahead
    await enqueue_at(db, T0 + 100)  # then one whose clock is behind
    source = stamps(db)
    replayed = replay_at(db, T0 + 150, tmp_path / "then.db")
    assert replayed == [row for row in source if row[1] <= T0 + 150]
    assert len(replayed) == 2  # the first commit: its enqueue and its seal


async def test_replay_at_of_a_ledger_with_times_out_of_order_takes_nothing_later(
        tmp_path: Path):
    """A ledger written before `at` was read under the lock may hold times out of order:
    the replay stops before the first event stamped after T."""
    db = tmp_path / "old.db"
    conn = connection.connect(db)
    connection.migrate(conn)
    for moment in (T0, T0 + 200, T0 + 100):  # stamped as the old writers did
        conn.execute("BEGIN IMMEDIATE")
        tx = Tx(conn, moment)
        ops.enqueue(tx, [records.NewJob(f"{int(moment):032x}", "default", "job", None, moment,
                                    0, 3)])
        tx.seal()
        conn.execute("COMMIT")
    conn.close()
    replayed = replay_at(db, T0 + 150, tmp_path / "then.db")
    assert replayed and all(at <= T0 + 150 for _, at in replayed)
    assert replayed == stamps(db)[:len(replayed)]
