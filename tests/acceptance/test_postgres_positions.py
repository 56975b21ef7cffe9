"""Positions on PostgreSQL are gap-free in commit order: with many writers in several
processes committing at once, a tailing reader (`evq events --follow`) and a durable
subscriber in another process see every event exactly once, in position order, with no
position skipped, and the hash chain verifies. (On PostgreSQL a sequence value taken by
one transaction can commit after a larger one; a reader tailing positions would skip it
forever. The ledger hands out positions under its append lock instead.)"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_server import drop_handed_out, new_place

import evq
from evq.ledger import open_ledger

WRITERS = 4
JOBS_EACH = 150
DEADLINE = 60.0

WRITER = textwrap.dedent('''
    import asyncio, sys
    import evq

    async def main(url, who, count):
        async with evq.Context(url) as ctx:
            ctx.define("noop", lambda payload: None)
            # Many commits in flight at once, from every writer process.
            for start in range(0, count, 10):
                await asyncio.gather(*(ctx.enqueue("noop", {"who": who, "n": n})
                                       for n in range(start, min(count, start + 10))))
        ctx = evq.Context(url)  # and the synchronous producer, one commit each
        ctx.define("noop", lambda payload: None)
        producer = ctx.sync()
        for n in range(10):
            producer.enqueue("noop", {"who": who, "sync": n})
        producer.close()

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
''')

SUBSCRIBER = textwrap.dedent('''
    import asyncio, os, sys
    import evq

    async def main(url):
        async def seen(event):
            os.write(1, f"{event.position}\\n".encode())
        async with evq.Context(url) as ctx:
            ctx.add_event_handler(seen, durable="gapless", lease=5.0)
            os.write(1, b"ready\\n")
            await asyncio.Event().wait()

    asyncio.run(main(sys.argv[1]))
''')


@pytest.fixture
def pg_ledger(postgres_url: str) -> Iterator[str]:
    place = new_place()
    yield place
    drop_handed_out()


async def _lines(proc: asyncio.subprocess.Process, until: int, deadline: float,
                 parse: object) -> list[int]:
    """Positions a process prints, until one reaches `until`."""
    assert proc.stdout is not None
    loop = asyncio.get_running_loop()
    positions: list[int] = []
    while not positions or positions[-1] < until:
        line = await asyncio.wait_for(proc.stdout.readline(), deadline - loop.time())
        if not line:
            raise AssertionError(f"the reader exited ({await proc.wait()}) after "
                                 f"{positions[-5:]}")
        position = parse(line)  # type: ignore[operator]
        if position is not None:
            positions.append(position)
    return positions


async def test_many_writers_in_many_processes_leave_no_gap_for_tailing_readers(
        pg_ledger: str, tmp_path: Path) -> None:
    (tmp_path / "writer.py").write_text(WRITER)
    (tmp_path / "subscriber.py").write_text(SUBSCRIBER)
    async with evq.Context(pg_ledger) as ctx:  # the schema, and one first event
        ctx.define("noop", lambda payload: None)
        await ctx.enqueue("noop", {"first": True})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "evq", "events", "--follow", "--json", "--seals",
        "--db", pg_ledger, "--poll", "0.01", stdout=asyncio.subprocess.PIPE, env=env)
    subscriber = await asyncio.create_subprocess_exec(
        sys.executable, str(tmp_path / "subscriber.py"), pg_ledger,
        stdout=asyncio.subprocess.PIPE, env=env)
    try:
        assert subscriber.stdout is not None
        assert await asyncio.wait_for(subscriber.stdout.readline(), DEADLINE) == b"ready\n"
        writers = [await asyncio.create_subprocess_exec(
            sys.executable, str(tmp_path / "writer.py"), pg_ledger, f"w{i}",
            str(JOBS_EACH), env=env) for i in range(WRITERS)]
        assert [await asyncio.wait_for(w.wait(), deadline - loop.time())
                for w in writers] == [0] * WRITERS
        head = open_ledger(pg_ledger).last_position()
        followed = await _lines(follower, head, deadline,
                                lambda line: json.loads(line)["position"])
        delivered = await _lines(subscriber, head - 1, deadline,
                                 lambda line: int(line) if line.strip().isdigit() else None)
    finally:
        for proc in (follower, subscriber):
            proc.kill()
            await proc.wait()

    ledger = open_ledger(pg_ledger)
    stored = [event.position for event in ledger.read_events()]
    assert stored == list(range(1, head + 1))  # no position was ever skipped
    assert followed == stored  # every event once, in order, seals included
    events = [e.position for e in ledger.read_events() if e.kind != "seal"]
    assert delivered == [p for p in events if p <= delivered[-1]]
    assert delivered[-1] == events[-1]
    assert sum(1 for e in ledger.read_events() if e.kind == "enqueue") == (
        1 + WRITERS * (JOBS_EACH + 10))
    check = ledger.verify()
    assert check.chain is not None and check.chain.ok and check.replay is not None
    assert check.replay.ok
