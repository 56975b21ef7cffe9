"""One SIGINT stops every worker and orchestrator of a process that asked for it, with
`run(handle_signals=True)` on each or with `evq.serve(...)` (cuckmq's first-look
example: two workers and an orchestrator, stopped by Ctrl-C)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import textwrap
import time
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent('''
    import asyncio, os, sqlite3, sys
    import evq

    async def started(db, leader):
        """Both workers registered (and the leader elected): their signal handling is
        in place, since each run() installs it before anything else."""
        while True:
            with sqlite3.connect(db) as conn:
                names = {r[0] for r in conn.execute("SELECT name FROM evq_workers")}
                leads = conn.execute("SELECT count(*) FROM evq_leaders").fetchone()[0]
            if {"mail", "reports"} <= names and (leads or not leader):
                return
            await asyncio.sleep(0.01)

    async def main(mode):
        db = os.environ["EVQ_DB"]
        async with evq.Context(db) as ctx:
            ctx.define("send", lambda p: p, queue="mail")
            ctx.define("report", lambda p: p, queue="reports")
            mail = ctx.worker(queues=["mail"], name="mail")
            reports = ctx.worker(queues=["reports"], name="reports")
            if mode == "serve":
                runs = [evq.serve(mail, reports, ctx.orchestrator())]
            elif mode == "workers":
                runs = [w.run(handle_signals=True) for w in (mail, reports)]
            else:
                runs = [mail.run(handle_signals=True), reports.run(handle_signals=True),
                        ctx.orchestrator().run(handle_signals=True)]
            serving = asyncio.gather(*runs)
            await started(db, leader=mode != "workers")
            print("ready", flush=True)
            await serving
        print("stopped", flush=True)

    asyncio.run(main(sys.argv[1]))
''')


@pytest.mark.parametrize("mode", ["workers", "workers_and_orchestrator", "serve"])
async def test_one_sigint_stops_every_runner_of_the_process(tmp_path: Path, mode: str):
    script = tmp_path / "app.py"
    script.write_text(SCRIPT)
    db = tmp_path / "ledger.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), mode, env={**os.environ, "EVQ_DB": str(db)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line == b"ready\n", line  # (the finally kills it; no wait on its stderr)
        began = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert out == b"stopped\n"
    assert b"Traceback" not in err
    assert time.monotonic() - began < 10
    with sqlite3.connect(db) as conn:  # each stopped cleanly: it left the registry
        assert conn.execute("SELECT count(*) FROM evq_workers").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM evq_leaders").fetchone()[0] == 0
