"""The reading commands run against a ledger that a worker process is writing, without
blocking it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import evq

APP = textwrap.dedent('''
    import asyncio, os
    import evq

    ctx = evq.Context(os.environ["EVQ_DB"])

    @ctx.job()
    async def work(payload):
        await asyncio.sleep(0.005)  # the job itself
        return payload
''')


async def test_reading_commands_while_a_worker_writes(tmp_path: Path):
    db = tmp_path / "busy.db"
    (tmp_path / "busy_app.py").write_text(APP)
    async with evq.Context(db) as ctx:
        ctx.define("work", None)
        await ctx.enqueue_many(("work", i) for i in range(2000))
        done = asyncio.Event()
        finished: list[str] = []

        async def count(event: evq.Event) -> None:
            finished.append(event.job_id or "")
            if len(finished) == 2000:
                done.set()

        ctx.add_event_handler(count, kinds=["success"])
        env = {**os.environ, "EVQ_DB": str(db), "PYTHONPATH": str(tmp_path)}
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "evq", "worker", "busy_app:ctx", "--concurrency", "4",
            "--no-orchestrator", cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
        try:
            seen_during = 0
            for command in (["events", "--json"], ["jobs"], ["stats", "--json"],
                            ["verify"], ["history", "zzzz"]):
                reader = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "evq", *command, "--db", str(db),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                _, err = await asyncio.wait_for(reader.communicate(), 30)
                expected = 3 if command[0] == "history" else 0  # 3: no such job
                assert reader.returncode == expected, (command, err)
                seen_during = max(seen_during, len(finished))
            assert seen_during < 2000  # the worker was still busy while they read
            await asyncio.wait_for(done.wait(), 60)
        finally:
            worker.terminate()
            await worker.wait()
    assert len(set(finished)) == 2000
