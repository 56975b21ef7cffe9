"""Stored values never break readers: a ledger whose rows hold times no datetime can
show (1e18, infinity, minus 1e18, text), or result, error and event data that are not
JSON, is still read by `evq jobs`, `evq history`, `evq events`, `evq tree`, `evq stats`,
`ctx.jobs()`, `ctx.get_job()` and `ctx.history()`, for every job, the forged ones
included. (The rows are written with plain sqlite3, as a forger or an old evq would.)"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

import evq

# How a time no datetime can show (or that is no number) reads back: the first or the
# last datetime.
FIRST_DATETIME = datetime.min.replace(tzinfo=UTC)
LAST_DATETIME = datetime.max.replace(tzinfo=UTC)


def evq_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("EVQ_DB", None)
    return subprocess.run([sys.executable, "-m", "evq", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=20)


async def make_jobs(db: Path, count: int) -> list[str]:
    async with evq.Context(db) as ctx:
        @ctx.job(max_attempts=1)
        def work(payload: int) -> int:
            if payload % 2:
                raise RuntimeError("odd")
            return payload

        ids = [await work.enqueue(number) for number in range(count)]
        await ctx.drain()
        return ids


# What a forger (or an old evq) left in three jobs' rows, column by column.
FORGERIES = [
    {"run_at": 1e18, "enqueued_at": float("inf"), "lease_until": 1e300,
     "started_at": "yesterday", "finished_at": 253402300800.0, "orphaned_at": b"\x00\xff",
     "result": "{not json", "error": "plain text"},
    {"run_at": -1e18, "enqueued_at": float("-inf"), "result": "[" * 100_000,
     "error": "[1, 2]"},
    {"run_at": "soon", "error": "123"},
]


@pytest.fixture(scope="module")
def forged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    db = tmp_path_factory.mktemp("forged") / "forged.db"
    ids = asyncio.run(make_jobs(db, len(FORGERIES) + 2))
    conn = sqlite3.connect(db)
    for job_id, columns in zip(ids, FORGERIES, strict=False):
        for column, value in columns.items():
            conn.execute(f"UPDATE evq_jobs SET {column} = ? WHERE id = ?", (value, job_id))
    # Events: the append-only trigger dropped, as a forger would.
    conn.execute("DROP TRIGGER evq_events_no_update")
    last = ids[-1]
    for kind, column, value in (("enqueue", "at", 1e18), ("dequeue", "at", "noon"),
                                ("run", "data", "not json at all"),
                                ("success", "data", "[1, 2, 3]"),
                                ("success", "at", float("-inf"))):
        conn.execute(f"UPDATE evq_events SET {column} = ? WHERE position = (SELECT "
                     "min(position) FROM evq_events WHERE kind = ? AND job_id = ?)",
                     (value, kind, last))
    conn.commit()
    conn.close()
    return db, ids


def test_the_command_line_reads_every_forged_row(forged: tuple[Path, list[str]]):
    db, ids = forged
    jobs = evq_cli("jobs", "--db", db)
    assert jobs.returncode == 0, jobs.stderr
    assert all(job_id in jobs.stdout for job_id in ids)
    assert "9999-12-31 23:59:59.999Z" in jobs.stdout  # inf and beyond: the last datetime
    commands = [["events"], ["stats"]]
    for job_id in (*ids[:3], ids[-1]):
        commands += [["history", job_id], ["tree", job_id]]
    commands += [["tree", ids[0], "--json"], ["tree", ids[-1], "--history"]]
    for command in commands:
        result = evq_cli(*command, "--db", db)
        assert result.returncode == 0, (command, result.stderr)
        assert "Traceback" not in result.stderr
    history = evq_cli("history", ids[-1], "--db", db).stdout
    assert "unreadable data: \"not json at all\"" in history


async def test_the_library_reads_every_forged_row(forged: tuple[Path, list[str]]):
    db, ids = forged
    async with evq.Context(db) as ctx:
        records = {job.id: job for job in await ctx.jobs()}
        assert set(records) == set(ids)
        for job_id in ids:
            assert await ctx.get_job(job_id) == records[job_id]
            assert await ctx.history(job_id)
        events = await ctx.events(limit=10_000)
    first, second, third = (records[job_id] for job_id in ids[:3])
    assert first.run_at == LAST_DATETIME and first.enqueued_at == LAST_DATETIME
    assert first.started_at == FIRST_DATETIME and first.finished_at == LAST_DATETIME
    assert first.result == "{not json" and first.error == {"message": "plain text"}
    assert second.run_at == FIRST_DATETIME and second.enqueued_at == FIRST_DATETIME
    assert second.result == "[" * 100_000 and second.error == {"message": [1, 2]}
    assert third.run_at == FIRST_DATETIME and third.error == {"message": 123}
    last = [event for event in events if event.job_id == ids[-1]]
    assert {"unreadable": "not json at all"} in [event.data for event in last]
    assert {"unreadable": [1, 2, 3]} in [event.data for event in last]
    assert FIRST_DATETIME in [event.at for event in last]


def test_a_state_evq_never_writes_is_a_clear_error(tmp_path: Path):
    db = tmp_path / "state.db"
    (job_id,) = asyncio.run(make_jobs(db, 1))
    conn = sqlite3.connect(db)
    conn.execute("UPDATE evq_jobs SET state = 'bogus'")
    conn.commit()
    conn.close()
    result = evq_cli("jobs", "--db", db)
    assert result.returncode == 2 and "never writes" in result.stderr
    assert "Traceback" not in result.stderr and job_id in result.stderr


async def test_event_handlers_read_every_forged_row(forged: tuple[Path, list[str]],
                                                   tmp_path: Path):
    """A durable handler, a replay and the live dispatcher catching up from the file all
    read an event whose data is not JSON: they deliver it, as unreadable, and go on."""
    db, ids = forged
    copy = tmp_path / "copy.db"
    shutil.copy(db, copy)
    async with evq.Context(copy) as ctx:
        replayed: list[evq.Event] = []
        await ctx.replay_to(replayed.append)
        durable: list[evq.Event] = []
        stop = ctx.add_event_handler(durable.append, durable="forged-reader",
                                     start="beginning")
        while not (states := await ctx.subscribers()) or states[0].lag:
            await ctx.flush_events()
        stop()
    for seen in (replayed, durable):
        assert {"unreadable": "not json at all"} in [event.data for event in seen]
        assert len({event.job_id for event in seen if event.job_id}) == len(ids)
    cli = evq_cli("events", "--db", db, "--limit", "5")
    assert cli.returncode == 0 and "Traceback" not in cli.stderr, cli.stderr
