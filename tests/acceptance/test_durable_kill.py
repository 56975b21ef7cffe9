"""A durable handler killed mid-stream resumes with no gap and no reordering."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import evq
from evq.durable import SAVE_EVERY

CONSUMER = textwrap.dedent('''
    import asyncio, os, signal, sys, time
    import evq

    async def main():
        # Its own SIGINT handler: a child of a shell's background job inherits SIGINT
        # ignored, and asyncio.run() then installs none.
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
        async with evq.Context(os.environ["EVQ_DB"]) as ctx:
            out = open(os.environ["OUT"], "a")

            def handle(event):
                time.sleep(0.002)  # a slow sink, so that the kill lands mid-stream
                out.write(f"{event.position}\\n")
                out.flush()
                print(event.position, flush=True)

            ctx.add_event_handler(handle, durable="auditor", lease=0.5)
            await stop.wait()

    asyncio.run(main())
''')


async def start(tmp_path: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "EVQ_DB": str(tmp_path / "l.db"), "OUT": str(tmp_path / "seen.txt")}
    return await asyncio.create_subprocess_exec(
        sys.executable, str(tmp_path / "consumer.py"), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)


async def read_until(proc: asyncio.subprocess.Process, position: int) -> None:
    assert proc.stdout is not None

    async def scan() -> None:
        while int((await proc.stdout.readline()) or b"-1") < position:
            if proc.stdout.at_eof():
                raise AssertionError("the consumer stopped early")

    await asyncio.wait_for(scan(), 30)


async def test_killed_durable_handler_resumes_without_gap_or_reordering(tmp_path: Path):
    (tmp_path / "consumer.py").write_text(CONSUMER)
    async with evq.Context(tmp_path / "l.db") as ctx:
        ctx.define("job", None)
        await ctx.enqueue_many(("job", i) for i in range(300))
        head = 300  # the last enqueue; the seal after it is not delivered to handlers
        first = await start(tmp_path)
        try:
            await read_until(first, 60)
            first.send_signal(signal.SIGKILL)
            await first.wait()
        finally:
            if first.returncode is None:
                first.kill()
        seen_before = [int(x) for x in (tmp_path / "seen.txt").read_text().split()]
        assert seen_before and seen_before[-1] < head, "the kill should land mid-stream"
        second = await start(tmp_path)
        try:
            await read_until(second, head)
            second.send_signal(signal.SIGINT)  # a clean stop saves the cursor
            await asyncio.wait_for(second.wait(), 15)
        finally:
            if second.returncode is None:
                second.kill()
                await second.wait()
        [state] = await ctx.subscribers()
        # Its cursor covers every delivered event; whether it had also passed the commit's
        # seal when the stop came is a matter of timing.
        assert head <= state.position <= state.head == head + 1
    seen = [int(x) for x in (tmp_path / "seen.txt").read_text().split()]
    after = seen[len(seen_before):]
    assert seen_before == sorted(set(seen_before))  # in order, no repeat
    assert after == sorted(set(after))
    assert after[0] <= seen_before[-1] + 1  # no gap at the restart (a repeat is allowed)
    assert set(seen) == set(range(1, head + 1))  # nothing missed
    repeated = len(seen) - head
    assert 0 <= repeated <= SAVE_EVERY  # at least once: a crash re-delivers a little
