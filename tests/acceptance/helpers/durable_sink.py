"""A durable-handler consumer process, meant to be stopped and killed: run by
tests/acceptance/test_durable_failover.py.

Usage: python durable_sink.py LEDGER WHO LEASE BEFORE INSIDE [COPIES]

It copies every event of the ledger into the table `audit` of the same file, under the
durable name "audit-copy", writing the row and moving the cursor in one transaction (the
README's exactly-once sink). Each event takes a random time up to BEFORE seconds before its
transaction and up to INSIDE seconds inside it, so that a signal lands at any point of the
handler. After each commit it prints `WHO POSITION`; once subscribed it prints
`ready WHO PID`. With COPIES, the process first forks into that many consumers, `WHO`,
`WHO-1`, ... (consumers started by one supervisor). SIGINT or SIGTERM stops it cleanly.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
import time

import evq


def say(line: str) -> None:
    """One line on stdout in one write: the forked copies share the pipe."""
    os.write(1, f"{line}\n".encode())


async def consume(db: str, who: str, lease: float, before: float, inside: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    sink = sqlite3.connect(db, timeout=60, check_same_thread=False)

    def copy(event: evq.Event) -> None:
        time.sleep(random.uniform(0, before))
        with sink:  # commits the row and the cursor together, or rolls both back
            sink.execute("INSERT INTO audit (position, who) VALUES (?, ?)",
                         (event.position, who))
            time.sleep(random.uniform(0, inside))
            evq.advance_cursor(sink, "audit-copy", event.position, event.timestamp)
        say(f"{who} {event.position}")

    async with evq.Context(db) as ctx:
        ctx.add_event_handler(copy, durable="audit-copy", lease=lease)
        say(f"ready {who} {os.getpid()}")
        await stop.wait()
    sink.close()


def main() -> None:
    db, who = sys.argv[1], sys.argv[2]
    lease, before, inside = (float(arg) for arg in sys.argv[3:6])
    copies = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    names = (who, *(f"{who}-{i}" for i in range(1, copies)))
    index = 0
    for i in range(1, copies):
        # Every copy made the same objects in the same order before it forked, so their
        # memory layouts stay alike: only the value of fork() differs.
        if index == 0 and os.fork() == 0:
            index = i
    asyncio.run(consume(db, names[index], lease, before, inside))


if __name__ == "__main__":
    main()
