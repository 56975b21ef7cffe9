"""Durable handlers with a hot standby: a sink that writes its rows and its cursor in one
transaction gets every event exactly once, in order, whatever happens to the consumers.

Each consumer is a real process (helpers/durable_sink.py) copying the ledger's events
into the table `audit` of the same file; the tests stop, freeze and kill them with real
signals, then compare the table with the ledger: each position once, none missing, in
ledger order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import evq
from evq.ledger import open_ledger

HELPER = Path(__file__).parent / "helpers" / "durable_sink.py"
DEADLINE = 60.0  # generous: only a failing test waits that long


class Consumers:
    """The consumer processes of one test and the lines they print (`WHO POSITION`)."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.procs: list[asyncio.subprocess.Process] = []
        self.pids: dict[str, int] = {}
        self.copied: list[tuple[str, int]] = []  # (who, position), in the order read
        self._readers: list[asyncio.Task[None]] = []

    async def start(self, who: str, lease: float, before: float, inside: float = 0.0, *,
                    copies: int = 1) -> None:
        """Start a consumer (forked into `copies`) and wait until each has subscribed. Its
        handler takes up to `before` seconds before its transaction, `inside` in it."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HELPER), str(self.db), who, str(lease), str(before),
            str(inside),
            str(copies),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        self.procs.append(proc)
        subscribed = asyncio.Event()
        self._readers.append(asyncio.get_running_loop().create_task(
            self._read(proc, subscribed, copies)))
        await asyncio.wait_for(subscribed.wait(), DEADLINE)

    async def _read(self, proc: asyncio.subprocess.Process, subscribed: asyncio.Event,
                    ready: int) -> None:
        assert proc.stdout is not None
        while line := (await proc.stdout.readline()).decode().split():
            if line[0] == "ready":
                self.pids[line[1]] = int(line[2])
                ready -= 1
                if ready == 0:
                    subscribed.set()
            else:
                self.copied.append((line[0], int(line[1])))

    def signal(self, who: str, signum: int) -> None:
        os.kill(self.pids[who], signum)

    async def until(self, condition: Callable[[], bool], what: str,
                    deadline: float = DEADLINE) -> None:
        """Poll `condition` until it holds, up to the deadline."""
        async def poll() -> None:
            while not condition():
                await asyncio.sleep(0.01)
        try:
            await asyncio.wait_for(poll(), deadline)
        except TimeoutError:
            raise AssertionError(f"timed out waiting until {what}") from None

    async def stop(self) -> None:
        """Stop every consumer still alive (SIGINT, a clean stop) and wait for them."""
        for pid in self.pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGINT)
        for proc in self.procs:
            await asyncio.wait_for(proc.wait(), DEADLINE)
        await asyncio.gather(*self._readers)
        await self.reap_children()

    async def reap_children(self) -> None:
        """A forked consumer is not our child: wait until it has exited too."""
        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False
        await self.until(lambda: all(gone(pid) for pid in self.pids.values()),
                         "every consumer has exited")

    def kill_all(self) -> None:
        for pid in self.pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def consumers(tmp_path: Path) -> AsyncIterator[Consumers]:
    db = tmp_path / "l.db"
    sink = sqlite3.connect(db)
    evq.migrate(db)
    sink.execute("CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                 "position INTEGER NOT NULL, who TEXT NOT NULL)")  # no UNIQUE: repeats show
    sink.commit()
    sink.close()
    group = Consumers(db)
    try:
        yield group
    finally:
        group.kill_all()


async def enqueue(db: Path, count: int) -> None:
    async with evq.Context(db) as ctx:
        ctx.define("job", None)
        await ctx.enqueue_many(("job", i) for i in range(count))


def expected_positions(db: Path) -> list[int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return [p for (p,) in conn.execute(
            "SELECT position FROM evq_events WHERE kind != 'seal' ORDER BY position")]


def sink_rows(db: Path) -> list[tuple[int, str]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return list(conn.execute("SELECT position, who FROM audit ORDER BY seq"))


def all_copied(db: Path) -> Callable[[], bool]:
    def done() -> bool:
        return {p for p, _ in sink_rows(db)} >= set(expected_positions(db))
    return done


def assert_each_position_once_in_order(db: Path) -> None:
    copied = [position for position, _ in sink_rows(db)]
    expected = expected_positions(db)
    twice = sorted({p for p in copied if copied.count(p) > 1})
    assert not twice, f"{len(twice)} positions copied more than once: {twice[:20]}"
    assert copied == expected, "positions missing or out of order"


async def test_a_hot_standby_never_copies_a_position_twice(consumers: Consumers):
    # Consumers started by one supervisor that forks: the same program in the same memory
    # layout, as in the README's failover setup (one holds, the others stand by). No
    # fault at all.
    await enqueue(consumers.db, 30)
    await consumers.start("A", lease=30, before=0.01, inside=0.01, copies=4)
    await enqueue(consumers.db, 20)  # and some live
    await consumers.until(all_copied(consumers.db), "every event is copied")
    [state] = open_ledger(consumers.db).cursor_states()  # what `evq subscribers` shows
    await consumers.stop()
    assert_each_position_once_in_order(consumers.db)
    assert len({who for _, who in sink_rows(consumers.db)}) == 1  # the standby waited
    _host, pid, token = (state.holder or "").split(":")
    assert int(pid) in consumers.pids.values() and len(token) == 16


async def test_a_slow_handler_that_is_alive_keeps_its_name(consumers: Consumers):
    # About 60 ms an event with a 0.5 s lease: the holder is slow but healthy.
    await enqueue(consumers.db, 40)
    await consumers.start("slow", lease=0.5, before=0.08, inside=0.04)
    await consumers.until(lambda: len(consumers.copied) >= 2, "the first consumer copies")
    await consumers.start("standby", lease=0.5, before=0.08, inside=0.04)
    await consumers.until(all_copied(consumers.db), "every event is copied")
    await consumers.stop()
    assert_each_position_once_in_order(consumers.db)
    assert {who for _, who in sink_rows(consumers.db)} == {"slow"}


async def test_a_holder_frozen_past_its_lease_is_fenced_when_it_wakes(consumers: Consumers):
    # The handler spends its time before its transaction, so the freeze lands there (a
    # process frozen inside a write transaction holds the file's write lock: then
    # nobody can write until it wakes, and the test freezes it again).
    await enqueue(consumers.db, 60)
    await consumers.start("A", lease=0.5, before=0.1)
    await consumers.start("B", lease=0.5, before=0.1)
    for _ in range(5):
        copied = len(consumers.copied)
        await consumers.until(lambda: len(consumers.copied) > copied,  # noqa: B023
                              "A copies an event")
        frozen_at = len(consumers.copied)
        consumers.signal("A", signal.SIGSTOP)  # mid-handler, before its transaction
        with contextlib.suppress(AssertionError):
            await consumers.until(
                lambda: any(who == "B" for who, _ in consumers.copied[frozen_at:]),  # noqa: B023
                "B takes over while A is frozen", deadline=5)
            break
        consumers.signal("A", signal.SIGCONT)
    else:
        raise AssertionError("B never took over from the frozen A")
    consumers.signal("A", signal.SIGCONT)  # A goes on with the event it was handling
    await enqueue(consumers.db, 10)
    await consumers.until(all_copied(consumers.db), "every event is copied")
    await consumers.stop()
    assert_each_position_once_in_order(consumers.db)


async def test_consumers_killed_at_random_moments_copy_each_event_once(
        consumers: Consumers):
    seed = random.randrange(2**32)
    print("seed", seed)  # shown if the test fails
    chance = random.Random(seed)
    await enqueue(consumers.db, 50)
    await consumers.start("c0", lease=0.4, before=0.01, inside=0.01)
    await consumers.start("c1", lease=0.4, before=0.01, inside=0.01)
    alive = ["c0", "c1"]
    for kill in range(2, 7):
        seen = len(consumers.copied)
        await enqueue(consumers.db, 10)
        wait_for = chance.randint(1, 6)
        await consumers.until(lambda: len(consumers.copied) >= seen + wait_for,  # noqa: B023
                              "the holder copies more events")
        holder = consumers.copied[-1][0]
        victim = holder if chance.random() < 0.75 else next(c for c in alive if c != holder)
        consumers.signal(victim, signal.SIGKILL)  # wherever its handler is just now
        alive.remove(victim)
        await consumers.start(f"c{kill}", lease=0.4, before=0.01, inside=0.01)
        alive.append(f"c{kill}")
    await consumers.until(all_copied(consumers.db), "every event is copied")
    await consumers.stop()
    assert_each_position_once_in_order(consumers.db)
