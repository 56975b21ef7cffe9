"""Exhausted-attempts hooks are never stranded: a worker process killed (SIGKILL) in the
middle of a hook, with no restart, leaves it to a live worker of another process within
the hook lease; hooks are taken one at a time, so the others never wait for the dead
one; and each expired job gets exactly one `done`."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from pathlib import Path

from helpers.ledger_reads import ledger, poll

import evq

APP = textwrap.dedent('''
    import asyncio, os, sys, threading
    import evq

    ctx = evq.Context(os.environ["EVQ_DB"])

    def doomed(payload):
        raise RuntimeError("the mailbox does not exist")

    def tell_support(record):
        print(f"hook {record.id}", flush=True)
        if os.environ.get("HANG_IN_HOOKS"):
            threading.Event().wait()  # until the process is killed

    ctx.define("doomed", doomed, queue="mail", max_attempts=1,
               on_max_attempts_exhausted=tell_support)
    ctx.define("report", lambda payload: payload, queue="reports")

    async def main(name, queue, hook_lease):
        async with ctx:
            await ctx.worker(queues=[queue], name=name, concurrency=5,
                             hook_lease=hook_lease).run()

    if __name__ == "__main__":
        asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
''')
HOOK_LEASE = 1.0


async def start(tmp_path: Path, name: str, queue: str, **env: str
                ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(tmp_path / "hooks_app.py"), name, queue, str(HOOK_LEASE),
        env={**os.environ, "EVQ_DB": str(tmp_path / "ledger.db"), **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)


async def test_a_hook_whose_runner_was_killed_is_run_by_a_live_worker(tmp_path: Path):
    (tmp_path / "hooks_app.py").write_text(APP)
    db = tmp_path / "ledger.db"
    procs = []

    def hook_states() -> dict[object, object]:
        return dict(ledger(db, "SELECT id, hook_state FROM evq_jobs"))

    async with evq.Context(db) as ctx:
        ctx.define("doomed", None, queue="mail", max_attempts=1)
        try:
            hung = await ctx.enqueue("doomed", 0)
            victim = await start(tmp_path, "victim", "mail", HANG_IN_HOOKS="1")
            procs.append(victim)
            assert victim.stdout is not None
            line = await asyncio.wait_for(victim.stdout.readline(), 20)
            assert line.decode().split() == ["hook", hung]  # the victim hangs in it
            # The survivor serves another queue; it knows the job, so it runs hooks.
            survivor = await start(tmp_path, "survivor", "reports")
            procs.append(survivor)
            await poll(lambda: ("survivor",) in ledger(db, "SELECT name FROM evq_workers"), 20)
            # Two more jobs expire in the victim while its hook runner hangs: their hooks
            # are free, and the survivor notices them from the victim's commits.
            others = [await ctx.enqueue("doomed", i) for i in (1, 2)]
            await poll(lambda: all(hook_states().get(j) == "done" for j in others), 15)
            assert hook_states()[hung] == "running"  # renewed by the hanging victim

            victim.kill()
            await victim.wait()
            killed = time.monotonic()
            await poll(lambda: hook_states()[hung] == "done", 15)
            assert time.monotonic() - killed < HOOK_LEASE + 5
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    events = ledger(db, "SELECT job_id, worker, json_extract(data, '$.status') "
                        "FROM evq_events WHERE kind = 'hook' ORDER BY position")
    for job_id in [hung, *others]:
        statuses = [(worker, status) for j, worker, status in events if j == job_id]
        assert [s for _, s in statuses].count("done") == 1, statuses
        assert ("survivor", "done") in statuses
    started_by_victim = [j for j, worker, status in events
                         if worker == "victim" and status == "started"]
    assert started_by_victim == [hung]  # one at a time, as each starts
    assert ledger(db, "SELECT count(*) FROM evq_jobs WHERE state = 'expired'") == [(3,)]
