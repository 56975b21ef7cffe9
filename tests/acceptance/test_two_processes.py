"""Joystick's external queues: a producer-only application and a separate job server,
two real processes on one ledger file."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import evq

APP = textwrap.dedent('''
    import os
    import evq

    ctx = evq.Context(os.environ["EVQ_DB"])
    ctx.queue("emails", concurrency=4)

    @ctx.job(queue="emails")
    async def send_welcome(payload):
        return {"sent_to": payload["to"], "pid": os.getpid()}
''')


async def read_until(stream: asyncio.StreamReader, text: str, timeout: float = 15) -> str:
    seen = []

    async def scan() -> str:
        while True:
            line = (await stream.readline()).decode()
            if not line:
                raise AssertionError(f"stream ended before {text!r}: {''.join(seen)}")
            seen.append(line)
            if text in line:
                return line

    return await asyncio.wait_for(scan(), timeout)


async def test_producer_without_handlers_and_a_job_server_process(tmp_path: Path):
    db = tmp_path / "shared.db"
    (tmp_path / "jobserver_app.py").write_text(APP)
    env = {**os.environ, "EVQ_DB": str(db), "PYTHONPATH": str(tmp_path)}
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "evq", "worker", "jobserver_app:ctx", "--queues", "emails",
        "--name", "job-server", cwd=tmp_path, env=env, stderr=subprocess.PIPE)
    try:
        assert server.stderr is not None
        await read_until(server.stderr, "evq.worker_started")
        async with evq.Context(db) as app:
            app.define("send_welcome", None, queue="emails")  # no handler here
            done = asyncio.Event()
            results: dict[str, object] = {}

            async def collect(event: evq.Event) -> None:
                results[event.job_id] = event.data["result"]
                if len(results) == 2:
                    done.set()

            app.add_event_handler(collect, kinds=["success"])
            first = await app.enqueue("send_welcome", {"to": "ada@example.com"})
            with app.sync() as producer:
                second = producer.enqueue("send_welcome", {"to": "grace@example.com"})
            await asyncio.wait_for(done.wait(), 15)
        assert results[first]["sent_to"] == "ada@example.com"  # type: ignore[index]
        assert results[second]["pid"] == server.pid  # type: ignore[index]
        server.send_signal(signal.SIGTERM)
        await read_until(server.stderr, "evq.worker_stopped")
        assert await asyncio.wait_for(server.wait(), 15) == 0
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()


async def test_worker_command_reports_a_bad_app(tmp_path: Path):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "evq", "worker", "no_such_module:ctx", cwd=tmp_path,
        stderr=subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2
    assert b"cannot import 'no_such_module'" in err
