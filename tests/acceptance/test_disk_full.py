"""A worker survives a full disk: it logs, backs off, retries, and reports what it ran
once the disk takes writes again. Nothing is lost, nothing is left running, nothing
runs twice.

The worker is a real process (tests/acceptance/helpers/full_worker.py) whose file size
limit (RLIMIT_FSIZE) the test lowers while its jobs run, then raises again: to SQLite
that is a disk that is full, then is not.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import evq

HELPER = Path(__file__).parent / "helpers" / "full_worker.py"
DEADLINE = 30.0
RUNNING = 6


def count(db: Path, query: str) -> int:
    conn = sqlite3.connect(db, timeout=60)
    try:
        return int(conn.execute(query).fetchone()[0])
    finally:
        conn.close()


async def test_a_worker_rides_out_a_full_disk_and_reports_everything(tmp_path: Path):
    db = tmp_path / "ledger.db"
    async with evq.Context(db) as ctx:
        ctx.define("work", None)
        first = [await ctx.enqueue("work", n) for n in range(RUNNING)]
    worker = await asyncio.create_subprocess_exec(
        sys.executable, str(HELPER), str(db), str(RUNNING), stdout=asyncio.subprocess.PIPE)
    said: list[str] = []

    async def until_said(prefix: str, times: int = 1) -> None:
        assert worker.stdout is not None
        while sum(line.startswith(prefix) for line in said) < times:
            raw = await asyncio.wait_for(worker.stdout.readline(), DEADLINE)
            if not raw:
                raise AssertionError(f"the worker exited ({await worker.wait()}): {said}")
            said.append(raw.decode().strip())

    try:
        await until_said("started", RUNNING)  # every slot holds a job
        worker.send_signal(signal.SIGUSR1)  # the disk is full; the handlers return
        await until_said("lowered")
        # Its outcomes and its claims are refused now; more work arrives meanwhile.
        await until_said("log ")
        async with evq.Context(db) as ctx:
            ctx.define("work", None)
            later = [await ctx.enqueue("work", n) for n in range(RUNNING, 3 * RUNNING)]
        worker.send_signal(signal.SIGUSR2)  # space again
        await until_said("raised")
        deadline = time.monotonic() + DEADLINE
        while count(db, "SELECT count(*) FROM evq_jobs WHERE state = 'succeeded'") < 3 * RUNNING:
            assert time.monotonic() < deadline, said
            await asyncio.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), DEADLINE) == 0, said
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
    failures = {line.split()[2] for line in said if line.startswith("log evq.storage_error")}
    assert failures <= {"LedgerFull", "LedgerIOError"} and failures, said
    ids = first + later
    assert count(db, "SELECT count(*) FROM evq_jobs WHERE state <> 'succeeded'") == 0
    # Each job succeeded once, on its first attempt: none was rescued or run again.
    assert count(db, "SELECT count(*) FROM evq_events WHERE kind = 'success'") == len(ids)
    assert count(db, "SELECT count(*) FROM evq_events WHERE kind = 'dequeue'") == len(ids)
    assert count(db, "SELECT count(*) FROM evq_events WHERE kind IN ('rescue', 'error')") == 0
    verify = subprocess.run([sys.executable, "-m", "evq", "verify", "--db", str(db)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
