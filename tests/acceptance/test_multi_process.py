"""Rules that must hold across real processes on one ledger file: the group lock, a
queue's concurrency limit, and orchestrator leadership moving when its leader dies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import evq

APP = textwrap.dedent('''
    import asyncio, os, time
    import evq

    ctx = evq.Context(os.environ["EVQ_DB"])
    ctx.queue("limited", concurrency=2)

    async def timed(payload):
        start = time.time()
        await asyncio.sleep(payload)  # the work itself: long enough to overlap if allowed
        return [start, time.time()]

    ctx.define("grouped", timed, group="account-1")
    ctx.define("limited", timed, queue="limited")
    ctx.define("tick", lambda payload: time.time(), repeat=0.2)
''')


@asynccontextmanager
async def servers(tmp_path: Path, concurrency: list[int], *extra: str, first_index: int = 0
                  ) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    (tmp_path / "mp_app.py").write_text(APP)
    env = {**os.environ, "EVQ_DB": str(tmp_path / "ledger.db"), "PYTHONPATH": str(tmp_path)}
    procs = []
    try:
        for i, slots in enumerate(concurrency, start=first_index):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "evq", "worker", "mp_app:ctx", "--name", f"server-{i}",
                "--concurrency", str(slots), *extra, cwd=tmp_path, env=env,
                stderr=subprocess.PIPE)
            assert proc.stderr is not None
            while b"evq.worker_started" not in await asyncio.wait_for(
                    proc.stderr.readline(), 15):
                pass
            procs.append(proc)
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def wait_for_successes(app: evq.Context, ids: list[str]) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    done = asyncio.Event()

    async def collect(event: evq.Event) -> None:
        if event.job_id in ids:
            results[event.job_id] = event.data["result"]
            if len(results) == len(ids):
                done.set()

    app.add_event_handler(collect, kinds=["success"])
    for job_id in ids:  # some may have finished before the handler was added
        record = await app.get_job(job_id)
        if record is not None and record.state is evq.JobState.SUCCEEDED:
            results[job_id] = record.result
    if len(results) < len(ids):
        await asyncio.wait_for(done.wait(), 30)
    return results


def most_overlapping(spans: list[list[float]]) -> int:
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in points:
        running += step
        peak = max(peak, running)
    return peak


async def test_group_lock_and_queue_limit_hold_across_processes(tmp_path: Path):
    async with servers(tmp_path, [5], "--no-orchestrator") as first, \
            evq.Context(tmp_path / "ledger.db") as app:
        app.define("grouped", None)
        app.define("limited", None, queue="limited")
        started = asyncio.Event()
        running: list[str] = []

        async def note(event: evq.Event) -> None:
            running.append(event.job_id or "")
            if len(running) == 3:
                started.set()

        app.add_event_handler(note, kinds=["run"])
        # Server 0 alone takes a long job of the group and fills the queue's limit...
        long_ones = [await app.enqueue("grouped", 1.5, group="account-1"),
                     await app.enqueue("limited", 1.5), await app.enqueue("limited", 1.5)]
        await asyncio.wait_for(started.wait(), 15)
        # ...then server 1 starts, and server 0 is told to stop (it claims nothing more
        # but finishes what it holds, which keeps it at its limits long after the signal
        # is handled): server 1 runs every other job, and must respect the group lock and
        # the limit held by the other process meanwhile.
        async with servers(tmp_path, [5], "--no-orchestrator", first_index=1):
            first[0].send_signal(signal.SIGTERM)
            grouped = [await app.enqueue("grouped", 0.02, group="account-1")
                       for _ in range(4)]
            limited = [await app.enqueue("limited", 0.02) for _ in range(6)]
            ids = long_ones + grouped + limited
            results = await wait_for_successes(app, ids)
            workers = {j: (await app.get_job(j)).worker for j in ids}
    assert {workers[j] for j in long_ones} == {"server-0"}
    assert {workers[j] for j in grouped + limited} == {"server-1"}
    assert most_overlapping([results[j] for j in [long_ones[0], *grouped]]) == 1
    assert most_overlapping([results[j] for j in [*long_ones[1:], *limited]]) <= 2


async def test_leadership_moves_when_the_leader_process_is_killed(tmp_path: Path):
    async with servers(tmp_path, [2, 2], "--interval", "0.05", "--leader-lease", "0.5"
                   ) as procs, evq.Context(tmp_path / "ledger.db") as app:
        leaders: list[str] = []
        changed = asyncio.Event()

        async def note(event: evq.Event) -> None:
            leaders.append(event.worker or "")
            changed.set()

        app.add_event_handler(note, kinds=["leader"])
        for event in await app.events():
            if event.kind == "leader":
                await note(event)
        await asyncio.wait_for(changed.wait(), 15)
        first = leaders[-1]
        victim = procs[0] if f":{procs[0].pid}:" in first else procs[1]
        survivor = procs[1] if victim is procs[0] else procs[0]
        changed.clear()
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        await asyncio.wait_for(changed.wait(), 15)
        assert f":{survivor.pid}:" in leaders[-1]
        # The new leader keeps the repeating job going.
        fired = asyncio.Event()
        app.add_event_handler(lambda e: fired.set(), kinds=["schedule"])
        await asyncio.wait_for(fired.wait(), 15)
