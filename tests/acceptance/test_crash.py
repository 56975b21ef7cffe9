"""A worker process killed with SIGKILL in the middle of jobs loses nothing: its jobs are
rescued after their lease expires and run again, the attempt counted.

The victim is a real subprocess (tests/acceptance/helpers/crash_worker.py) that is really
killed while its handlers hang. Lease expiry is real time here (lease = 1 s): the test
never sleeps, it waits on the ledger's events with an overall deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import evq
from evq.ledger.sqlite import replay
from evq.testing import kinds_of, settle

HELPER = Path(__file__).parent / "helpers" / "crash_worker.py"
JOBS = 5
LEASE = 1.0
DEADLINE = 15.0  # seconds, for each wait; the whole test takes about 2 s


async def read_started(proc: asyncio.subprocess.Process, want: int, deadline: float
                       ) -> list[str]:
    """Read the helper's stdout until it printed `started <id>` for `want` jobs."""
    assert proc.stdout is not None
    started: list[str] = []
    loop = asyncio.get_running_loop()
    while len(started) < want:
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"the victim started only {started} before the deadline")
        line = await asyncio.wait_for(proc.stdout.readline(), left)
        if not line:
            raise AssertionError(f"the victim exited ({await proc.wait()}) after starting "
                                 f"{started}")
        text = line.decode().strip()
        if text.startswith("started "):
            started.append(text.split(" ", 1)[1])
    return started


async def test_sigkilled_worker_loses_nothing(tmp_path: Path):
    db = tmp_path / "ledger.db"
    async with evq.Context(db) as producer:
        producer.define("slow", None, lease=LEASE, max_attempts=3)
        ids = [await producer.enqueue("slow", {"n": n}) for n in range(JOBS)]

    stderr = (tmp_path / "victim.stderr").open("wb")
    victim = await asyncio.create_subprocess_exec(
        sys.executable, str(HELPER), str(db), str(JOBS * 2), str(LEASE),
        stdout=asyncio.subprocess.PIPE, stderr=stderr)
    try:
        loop = asyncio.get_running_loop()
        try:
            started = await read_started(victim, JOBS, loop.time() + DEADLINE)
        except (AssertionError, TimeoutError) as exc:
            stderr.flush()
            log = (tmp_path / "victim.stderr").read_text(errors="replace")[-3000:]
            raise AssertionError(f"the victim did not start its jobs: {exc!r}\n{log}") from exc
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.time()
        assert await asyncio.wait_for(victim.wait(), DEADLINE) == -signal.SIGKILL
    finally:
        if victim.returncode is None:
            victim.kill()
            await victim.wait()
        stderr.close()
    # Each job was started once, on its first attempt, by the victim.
    assert sorted(started) == sorted(ids)

    # A new process (here: this one) takes over with the real clock. Nothing is due
    # until the victim's leases run out; the worker waits for that on its own.
    async with evq.Context(db) as ctx:

        @ctx.job(lease=LEASE, max_attempts=3)
        async def slow(payload: Any, job: evq.Job) -> dict[str, Any]:
            return {"payload": payload, "attempt": job.attempt, "by": "rescuer"}

        succeeded: list[str] = []
        all_done = asyncio.Event()

        async def on_success(event: evq.Event) -> None:
            succeeded.append(event.job_id or "")
            if len(set(succeeded)) == JOBS:
                all_done.set()

        ctx.add_event_handler(on_success, kinds=["success"])
        worker = ctx.worker(name="rescuer")
        serving = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(all_done.wait(), DEADLINE)
        finally:
            worker.stop()
            await asyncio.wait_for(serving, DEADLINE)
        await ctx.flush_events()
        assert sorted(succeeded) == sorted(ids), "one success event per job, no more"

        for n, job_id in enumerate(ids):
            record = await ctx.get_job(job_id)
            assert record is not None
            assert record.state is evq.JobState.SUCCEEDED
            assert record.attempt == 2 and record.errors == 1
            assert record.result == {"payload": {"n": n}, "attempt": 2, "by": "rescuer"}

            # Nothing lost, nothing extra: the whole story of the job, in order.
            assert await kinds_of(ctx, job_id) == [
                "enqueue", "dequeue", "run", "rescue", "dequeue", "run", "success"]
            enqueue, dequeue1, run1, rescue, dequeue2, run2, success = \
                await ctx.history(job_id)
            assert (dequeue1.attempt, dequeue1.worker) == (1, "victim")
            assert (run1.attempt, run1.worker) == (1, "victim")
            assert rescue.attempt == 1 and rescue.worker == "rescuer"
            assert rescue.data["reason"] == "lease_expired"
            assert rescue.data["holder"] == "victim"
            assert rescue.data["retry_at"] is not None
            # Rescued only once the lease had run out, and after the victim died.
            assert rescue.timestamp >= dequeue1.data["lease_until"]
            assert rescue.timestamp >= killed_at - 0.5  # allow for clock granularity
            assert (dequeue2.attempt, dequeue2.worker) == (2, "rescuer")
            assert (run2.attempt, run2.worker) == (2, "rescuer")
            assert (success.attempt, success.worker) == (2, "rescuer")
            assert [e.kind for e in await ctx.history(job_id)].count("success") == 1
            positions = [e.position for e in (enqueue, dequeue1, run1, rescue, dequeue2,
                                              run2, success)]
            assert positions == sorted(set(positions))

    check = replay.check(db)
    assert check.ok, (check.only_stored, check.only_rebuilt, check.refusal)


async def test_a_live_worker_keeps_its_leases(db: Path):
    """The other half of the crash story: while the worker lives, heartbeats keep the
    lease, so a job that runs longer than its lease is not rescued nor run twice."""
    clock = evq.FakeClock()
    async with evq.Context(db, clock=clock) as ctx:
        gate = asyncio.Event()
        attempts: list[int] = []

        @ctx.job(lease=LEASE, max_attempts=3)
        async def slow(payload: Any, job: evq.Job) -> str:
            attempts.append(job.attempt)
            await gate.wait()
            return "done"

        job_id = await ctx.enqueue("slow")
        worker = ctx.worker(name="alive")
        serving = asyncio.create_task(worker.run())
        try:
            await settle(ctx)
            for _ in range(30):  # 3 lease lengths, in steps of a tenth of a lease
                clock.advance(LEASE / 10)
                await settle(ctx)
            kinds = await kinds_of(ctx, job_id)
            gate.set()
            await settle(ctx)
        finally:
            gate.set()
            worker.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(serving, DEADLINE)
        assert "rescue" not in kinds, kinds
        assert "heartbeat" in kinds, kinds
        assert attempts == [1]
        assert (await kinds_of(ctx, job_id))[-1] == "success"
