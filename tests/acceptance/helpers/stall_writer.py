"""One write through one of evq's writers, made while the test holds the write lock: run
by tests/acceptance/test_lock_stall.py.

Usage: python stall_writer.py LEDGER HOW [JOB_ID]

HOW is async (Context.enqueue), alone (SyncProducer.enqueue: one statement), many
(SyncProducer.enqueue_many), in (Context.enqueue_in in a plain sqlite3 transaction),
cancel (the command line's cancel of JOB_ID) or claim (a worker's drain). The process
sets its writer up, prints `loaded`, waits for a line on stdin, prints `asking`, makes
its write at once (it waits for the lock) and prints `done`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys

import evq
from evq import admin


def go() -> None:
    print("loaded", flush=True)
    sys.stdin.readline()
    print("asking", flush=True)


async def write_async(ctx: evq.Context, how: str) -> None:
    async with ctx:
        await asyncio.get_running_loop().run_in_executor(None, go)
        if how == "async":
            await ctx.enqueue("job", "async")
        else:
            await ctx.drain()


def write(db: str, how: str, job_id: str) -> None:
    ctx = evq.Context(db, busy_timeout=120)
    ctx.define("job", lambda payload: None)
    if how in ("async", "claim"):
        asyncio.run(write_async(ctx, how))
    elif how in ("alone", "many"):
        with ctx.sync() as producer:
            go()
            if how == "alone":
                producer.enqueue("job", "alone")
            else:
                producer.enqueue_many([("job", "many"), ("job", "many")])
    elif how == "in":
        conn = sqlite3.connect(db, isolation_level=None, timeout=120)
        conn.execute("BEGIN")
        go()
        ctx.enqueue_in(conn, "job", "in")
        conn.execute("COMMIT")
        conn.close()
    elif how == "cancel":
        go()
        admin.cancel(db, job_id, "cancelled during a stall")
    else:
        raise SystemExit(f"unknown HOW {how!r}")


def main() -> None:
    write(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
    print("done", flush=True)


if __name__ == "__main__":
    main()
