"""Worker identity: a plain restart of `evq worker APP` (no --name) comes back under the
same name and takes back what the killed run was running
(`retry_jobs_running_before_restart`), while two live workers never share a name and
never take each other's jobs."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

from helpers.ledger_reads import ledger, poll

import evq

APP = textwrap.dedent('''
    import asyncio, os
    import evq

    ctx = evq.Context(os.environ["EVQ_DB"])
    ctx.queue("mail", retry_jobs_running_before_restart=True)

    @ctx.job(queue="mail", lease=300)
    async def send(payload, job):
        if job.attempt == 1:
            print(f"started {job.id}", flush=True)
            await asyncio.Event().wait()  # hangs until the process is killed
        return f"sent on attempt {job.attempt}"
''')


class Servers:
    def __init__(self, tmp_path: Path) -> None:
        (tmp_path / "identity_app.py").write_text(APP)
        self.tmp_path = tmp_path
        self.db = tmp_path / "ledger.db"
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        """`evq worker identity_app:ctx`, once its worker has announced itself."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "evq", "worker", "identity_app:ctx", "--no-orchestrator",
            *args, cwd=self.tmp_path, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "EVQ_DB": str(self.db), "PYTHONPATH": os.pathsep.join(
                [str(self.tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])})
        self.procs.append(proc)
        return proc

    async def started(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while b"evq.worker_started" not in await asyncio.wait_for(proc.stderr.readline(), 20):
            pass

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def enqueue(db: Path) -> str:
    async with evq.Context(db) as ctx:
        ctx.define("send", None, queue="mail")
        return await ctx.enqueue("send", "ada@example.com")


async def test_a_plain_restart_takes_back_the_jobs_of_the_killed_run(tmp_path: Path):
    servers = Servers(tmp_path)
    try:
        first = await servers.start()
        await servers.started(first)
        job_id = await enqueue(servers.db)
        assert first.stdout is not None
        assert (await asyncio.wait_for(first.stdout.readline(), 20)).split()[1].decode() \
            == job_id
        [(name,)] = ledger(servers.db, "SELECT name FROM evq_workers")
        first.kill()
        await first.wait()

        again = await servers.start()  # the same command, no --name
        await servers.started(again)
        # At once, not after the 300 s lease: the restarted worker knows the job was its own.
        await poll(lambda: ledger(servers.db, "SELECT state FROM evq_jobs")
                   == [("succeeded",)], 15)
        assert ledger(servers.db, "SELECT name FROM evq_workers") == [(name,)]
    finally:
        await servers.close()
    history = ledger(servers.db, "SELECT kind, worker, json_extract(data, '$.reason') "
                                 "FROM evq_events WHERE job_id = ? ORDER BY position",
                     (job_id,))
    assert [kind for kind, _, _ in history] == [
        "enqueue", "dequeue", "run", "requeue", "dequeue", "run", "success"]
    assert history[3] == ("requeue", name, "worker_restart")
    assert name == f"{name.split(':')[0]}:mail"  # host and queues: stable


async def test_two_live_workers_never_share_a_name_nor_take_each_others_jobs(
        tmp_path: Path):
    servers = Servers(tmp_path)
    try:
        first = await servers.start()
        await servers.started(first)
        job_id = await enqueue(servers.db)
        assert first.stdout is not None
        await asyncio.wait_for(first.stdout.readline(), 20)
        [(first_name,)] = ledger(servers.db, "SELECT name FROM evq_workers")

        second = await servers.start()  # the same command while the first one lives
        await servers.started(second)
        names = sorted(n for (n,) in ledger(servers.db, "SELECT name FROM evq_workers"))
        assert names == [first_name, f"{first_name}-2"]

        # The same explicit name as a live worker is refused: nothing is taken.
        third = await servers.start("--name", first_name)
        _, err = await asyncio.wait_for(third.communicate(), 20)
        assert third.returncode == 2
        assert b"is held by a live worker" in err and b"Traceback" not in err
        assert ledger(servers.db, "SELECT state, worker FROM evq_jobs") == [
            ("running", first_name)]
    finally:
        await servers.close()
    kinds = [k for (k,) in ledger(servers.db, "SELECT kind FROM evq_events WHERE job_id = ?",
                                  (job_id,))]
    assert kinds == ["enqueue", "dequeue", "run"]  # never handed back while it ran
