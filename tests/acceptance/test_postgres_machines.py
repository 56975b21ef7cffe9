"""Several machines on one PostgreSQL ledger: a producer process and several worker
processes, each its own OS process connecting over TCP to 127.0.0.1, as separate hosts
would. Workers are SIGKILLed at random, mid-job, again and again (each replaced by a new
one); the ledger must still end with every acknowledged job succeeded exactly once.

"Acknowledged" means what the producer printed after `enqueue_many` returned. The check
is made on the ledger afterwards: each such job is in state succeeded with exactly one
`success` event in its history, no job anywhere has two, the killed workers' jobs were
rescued (so the kills did land mid-job), and `evq verify` passes. Leases are short, so
rescues come quickly; nothing sleeps to wait, every wait is on the ledger or a process's
output, with a deadline."""

from __future__ import annotations

import asyncio
import collections
import random
import signal
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from helpers.pg_faults import (
    assert_each_succeeded_once,
    assert_verifies,
    no_raw_driver_errors,
    running_on,
    until,
)
from helpers.pg_worker import define
from pg_server import drop_handed_out, new_place

import evq
from evq.ledger import open_ledger

HELPERS = Path(__file__).parent / "helpers"
JOBS = 5000
BATCH = 100
WORKERS = 4  # alive at any time
CONCURRENCY = 40
WORK = 0.2  # seconds each job takes: long enough for a kill to land mid-job
LEASE = 1.5
KILLS = 10
DEADLINE = 45.0  # for the whole run


@pytest.fixture
def pg_ledger(postgres_url: str) -> Iterator[str]:
    place = new_place()
    yield place
    drop_handed_out()


class Machines:
    """The producer and worker processes of one test, their output, and their ends."""

    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self.folder = folder
        self.workers: dict[str, asyncio.subprocess.Process] = {}
        self.killed: list[str] = []
        self.acknowledged: list[str] = []
        self.produced = asyncio.Event()
        self._started = 0

    async def start_worker(self) -> str:
        name = f"machine-{self._started}"
        self._started += 1
        stderr = (self.folder / f"{name}.stderr").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HELPERS / "pg_worker.py"), self.url, name, str(CONCURRENCY),
            str(LEASE), str(WORK), stdout=asyncio.subprocess.PIPE, stderr=stderr)
        stderr.close()  # the child holds its own copy
        self.workers[name] = proc
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), DEADLINE)
        assert line == b"ready\n", (name, line, self.log(name))
        return name

    async def kill(self, name: str) -> None:
        proc = self.workers.pop(name)
        proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(proc.wait(), DEADLINE) == -signal.SIGKILL
        self.killed.append(name)

    async def produce(self) -> int:
        """Run the producer to its end, collecting the ids it acknowledged; its exit."""
        stderr = (self.folder / "producer.stderr").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HELPERS / "pg_producer.py"), self.url, str(JOBS), str(BATCH),
            str(LEASE), stdout=asyncio.subprocess.PIPE, stderr=stderr)
        stderr.close()
        assert proc.stdout is not None
        try:
            async for line in proc.stdout:
                words = line.decode().split()
                if words and words[0] == "acked":
                    self.acknowledged += words[1:]
            return await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            self.produced.set()

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.stderr").read_text(errors="replace")

    async def stop_all(self) -> dict[str, int]:
        """SIGTERM every live worker; their exit codes."""
        for proc in self.workers.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        return {name: await asyncio.wait_for(proc.wait(), DEADLINE)
                for name, proc in self.workers.items()}

    async def kill_all(self) -> None:
        for proc in self.workers.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def succeeded(ctx: evq.Context) -> int:
    return (await ctx.counts()).get("succeeded", 0)


async def test_many_machines_with_workers_killed_at_random_lose_nothing(
        pg_ledger: str, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    chance = random.Random(seed)
    async with evq.Context(pg_ledger) as ctx:
        define(ctx, LEASE)  # this process only reads: the schema, and the definition
        machines = Machines(pg_ledger, tmp_path)
        try:
            await asyncio.gather(*(machines.start_worker() for _ in range(WORKERS)))
            producing = asyncio.create_task(machines.produce())
            # Kills spread over the run: the k-th once k/(KILLS + 3) of the jobs are done,
            # of a worker chosen at random among those running jobs just then (by the
            # ledger), replaced at once by a new one.
            for k in range(1, KILLS + 1):
                await until(partial(_at_least, ctx, JOBS * k // (KILLS + 3)),
                            DEADLINE, f"progress before kill {k} (seed {seed})")
                busy = await until(partial(_busy, pg_ledger, machines), DEADLINE,
                                   f"a worker running jobs (kill {k}, seed {seed})")
                await machines.kill(chance.choice(busy))
                await machines.start_worker()
            assert await asyncio.wait_for(producing, DEADLINE) == 0, \
                machines.log("producer")
            assert len(machines.acknowledged) == JOBS
            await until(lambda: _at_least(ctx, JOBS), DEADLINE,
                        f"every job to succeed (seed {seed})")
            assert await ctx.counts() == {"succeeded": JOBS}
            survivors = list(machines.workers)
            assert await machines.stop_all() == dict.fromkeys(survivors, 0)
        finally:
            await machines.kill_all()
        await assert_each_succeeded_once(ctx, pg_ledger, machines.acknowledged)

    assert len(machines.killed) >= KILLS
    # The kills landed mid-job: the killed workers' jobs were rescued from them once
    # their leases ran out, and run again by others.
    holders = collections.Counter(
        event.data.get("holder") for event in open_ledger(pg_ledger).read_events()
        if event.kind == "rescue")
    hit = set(machines.killed) & set(holders)
    assert len(hit) >= KILLS // 2, (seed, machines.killed, holders)
    for name in survivors:
        assert no_raw_driver_errors(machines.log(name)) == [], machines.log(name)[-3000:]
    assert_verifies(pg_ledger)


def _busy(ledger_url: str, machines: Machines) -> list[str]:
    return sorted(set(running_on(ledger_url)) & set(machines.workers))


async def _at_least(ctx: evq.Context, count: int) -> bool:
    return await succeeded(ctx) >= count
