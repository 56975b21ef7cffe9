"""A stall (another process holds the ledger's write lock for long) bends no time and
costs no healthy worker its job.

The stall is this test process holding `BEGIN IMMEDIATE` on a plain sqlite3 connection;
the writers and workers are real processes (tests/acceptance/helpers/stall_*.py).
Holding the lock for a given time is the fault being injected; every wait for an
outcome is on a line from a process or on the ledger, with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import evq
from evq.ledger.sqlite import replay

HELPERS = Path(__file__).parent / "helpers"
DEADLINE = 30.0


async def line_of(proc: asyncio.subprocess.Process, wanted: str, seen: list[str] | None = None
                  ) -> str:
    """Read the process's stdout until a line that starts with `wanted`."""
    assert proc.stdout is not None
    while True:
        raw = await asyncio.wait_for(proc.stdout.readline(), DEADLINE)
        if not raw:
            raise AssertionError(f"process exited ({await proc.wait()}) before {wanted!r}; "
                                 f"it said {seen}")
        text = raw.decode().strip()
        if seen is not None:
            seen.append(text)
        if text.startswith(wanted):
            return text


@contextlib.asynccontextmanager
async def started(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def rows(db: Path, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db, timeout=60)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


async def until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_writers_that_waited_through_a_stall_stamp_the_time_they_wrote(tmp_path):
    db = tmp_path / "ledger.db"
    async with evq.Context(db) as ctx:
        ctx.define("job", None)
        victim = await ctx.enqueue("job", "to cancel", delay=3600)  # not drained
        pending = await ctx.enqueue("job", "to claim")
    ways = ["async", "many", "in", "claim", "alone", "cancel"]
    async with contextlib.AsyncExitStack() as stack:
        writers = [await stack.enter_async_context(started(
            str(HELPERS / "stall_writer.py"), str(db), how, victim)) for how in ways]
        for writer in writers:
            await line_of(writer, "loaded")
        head = rows(db, "SELECT max(position) FROM evq_events")[0][0]
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            for writer in writers:  # each reads its clock, if it does, before it waits
                assert writer.stdin is not None
                writer.stdin.write(b"go\n")
                await writer.stdin.drain()
                await line_of(writer, "asking")
            released = time.time()
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        for writer in writers:
            await line_of(writer, "done")
            assert await asyncio.wait_for(writer.wait(), DEADLINE) == 0
    stamped = rows(db, "SELECT position, at, kind, job_id FROM evq_events WHERE position > ? "
                       "ORDER BY position", (head,))
    kinds = {kind for _, _, kind, _ in stamped}
    assert {"enqueue", "cancel", "dequeue", "success", "seal"} <= kinds
    assert pending in {job for _, _, kind, job in stamped if kind == "success"}
    early = [(position, kind, released - at) for position, at, kind, _ in stamped
             if at < released]
    assert not early, f"stamped before the lock was free: {early[:5]}"
    times = [at for _, at, _, _ in stamped]
    assert times == sorted(times)
    assert replay.check(db).ok


async def test_a_stall_longer_than_the_lease_costs_the_healthy_worker_nothing(tmp_path):
    """The healthy worker runs the job through a stall longer than its lease; a worker
    in a third process is ready to rescue it the moment the lease runs out. When the
    stall ends, the rescuer's claim and the holder's heartbeat race for the lock: the
    job must still run once, on its first attempt."""
    db = tmp_path / "ledger.db"
    gate = tmp_path / "finish"
    lease = 1.5
    async with evq.Context(db) as ctx:
        ctx.define("long", None, lease=lease, max_attempts=5)
        job_id = await ctx.enqueue("long")
    said: dict[str, list[str]] = {"healthy": [], "rescuer": []}
    async with contextlib.AsyncExitStack() as stack:
        # busy_timeout 1 s, shorter than the stall: both also see LedgerLocked.
        healthy = await stack.enter_async_context(started(
            str(HELPERS / "stall_worker.py"), str(db), "healthy", str(lease), "1", str(gate)))
        await line_of(healthy, "started", said["healthy"])
        rescuer = await stack.enter_async_context(started(
            str(HELPERS / "stall_worker.py"), str(db), "rescuer", str(lease), "1", str(gate)))
        await line_of(rescuer, "ready", said["rescuer"])
        await until(lambda: rows(db, "SELECT 1 FROM evq_workers WHERE name = 'rescuer'"),
                    "the rescuer to announce itself")
        [(lease_until,)] = rows(db, "SELECT lease_until FROM evq_jobs WHERE id = ?",
                                (job_id,))
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            # The fault: hold the lock until well past the lease, so the rescuer's timer
            # has fired and its claim waits, as does the holder's heartbeat.
            while time.time() < float(lease_until) + 1.5:
                await asyncio.sleep(0.05)
            released = time.time()
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        await until(lambda: rows(db, "SELECT 1 FROM evq_events WHERE job_id = ? AND at >= ? "
                                     "AND kind IN ('heartbeat', 'rescue')",
                                 (job_id, released)), "the first write on the job after the stall")
        gate.touch()
        await until(lambda: rows(db, "SELECT 1 FROM evq_jobs WHERE id = ? AND state NOT IN "
                                     "('pending', 'running')", (job_id,)), "the job to end")
        for proc in (healthy, rescuer):
            proc.send_signal(signal.SIGTERM)
        for name, proc in (("healthy", healthy), ("rescuer", rescuer)):
            with contextlib.suppress(AssertionError):
                await line_of(proc, "never", said[name])  # read the rest of what it says
            assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0, said[name]
    history = rows(db, "SELECT kind, attempt, worker, at, data FROM evq_events "
                       "WHERE job_id = ? ORDER BY position", (job_id,))
    kinds = [kind for kind, *_ in history]
    assert "rescue" not in kinds, history
    assert kinds[:3] == ["enqueue", "dequeue", "run"] and kinds[-1] == "success", kinds
    assert {attempt for _, attempt, *_ in history[1:]} == {1}
    assert {worker for _, _, worker, *_ in history[1:]} == {"healthy"}
    # Every lease written starts when it was written: none is already over.
    for kind, _, _, at, data in history:
        if kind in ("dequeue", "heartbeat"):
            assert json.loads(data)["lease_until"] > at
    assert [line for line in said["healthy"] if line.startswith("started")] == [
        f"started {job_id} 1"]
    assert not [line for line in said["rescuer"] if line.startswith("started")]
    # The wait was seen as a stall, and LedgerLocked was ridden out, not fatal.
    assert any("evq.ledger_stalled" in line for line in said["healthy"] + said["rescuer"])
    assert replay.check(db).ok
