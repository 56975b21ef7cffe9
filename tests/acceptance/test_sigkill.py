"""A worker process killed with SIGKILL in the middle of jobs loses nothing: its jobs are
rescued once their lease runs out and run again, the attempt counted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import evq
from evq.ledger import replay

APP = textwrap.dedent('''
    import asyncio, os
    import evq

    ctx = evq.Context(os.environ["EVQ_DB"])

    @ctx.job(lease=1.0, max_attempts=3)
    async def resize(payload):
        await asyncio.Event().wait()  # hangs until the process is killed
''')


async def test_sigkilled_worker_loses_no_job(tmp_path: Path):
    db = tmp_path / "ledger.db"
    (tmp_path / "victim_app.py").write_text(APP)
    async with evq.Context(db) as ctx:
        ctx.define("resize", lambda payload: f"resized {payload}", lease=1.0, max_attempts=3)
        ids = [await ctx.enqueue("resize", i) for i in range(5)]
        running: set[str] = set()
        all_running = asyncio.Event()

        def note(event: evq.Event) -> None:
            if event.worker == "victim":
                running.add(event.job_id or "")
                if len(running) == len(ids):
                    all_running.set()

        ctx.add_event_handler(note, kinds=["run"])
        env = {**os.environ, "EVQ_DB": str(db), "PYTHONPATH": str(tmp_path)}
        victim = subprocess.Popen(
            [sys.executable, "-m", "evq", "worker", "victim_app:ctx", "--name", "victim",
             "--no-orchestrator"], cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
        try:
            await asyncio.wait_for(all_running.wait(), 15)
            victim.send_signal(signal.SIGKILL)
            assert victim.wait(10) == -signal.SIGKILL
        finally:
            if victim.poll() is None:
                victim.kill()
                victim.wait()

        done = asyncio.Event()
        succeeded: list[str] = []

        def finish(event: evq.Event) -> None:
            succeeded.append(event.job_id or "")
            if len(succeeded) == len(ids):
                done.set()

        ctx.add_event_handler(finish, kinds=["success"])
        survivor = ctx.worker(name="survivor")
        task = asyncio.create_task(survivor.run())
        await asyncio.wait_for(done.wait(), 20)  # leases run out after 1 s, real time
        survivor.stop()
        await task

        for job_id in ids:
            record = await ctx.get_job(job_id)
            assert record.state is evq.JobState.SUCCEEDED
            assert record.attempt == 2 and record.errors == 1
            history = await ctx.history(job_id)
            assert [e.kind for e in history] == [
                "enqueue", "dequeue", "run", "rescue", "dequeue", "run", "success"]
            rescue = history[3]
            assert rescue.data["reason"] == "lease_expired"
            assert rescue.data["holder"] == "victim"
            assert history[-1].worker == "survivor"
        assert sorted(succeeded) == sorted(ids)
    assert replay.check(db).ok
