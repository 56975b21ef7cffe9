"""A worker process on a PostgreSQL ledger, for the fault tests (test_postgres_faults.py,
test_postgres_machines.py), which kill it, cut its connections or restart its server.

Usage: python pg_worker.py URL NAME CONCURRENCY LEASE WORK_SECONDS

Serves the job `work` as worker NAME: the handler takes WORK_SECONDS (the work itself)
and returns `{"n": <payload>, "by": NAME}`. Stdout carries `ready` once the worker is
about to serve; evq's warnings and errors go to stderr as `<logger> <LEVEL> <message>`
(with a traceback if one was logged, which the tests look for). SIGTERM stops it
gracefully (exit 0)."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import evq

MAX_ATTEMPTS = 50  # a job may be caught by many kills: it must not expire for that


def define(ctx: evq.Context, lease: float, handler: Any = None) -> None:
    """The job every process of these tests knows (the producer defines it without a
    handler)."""
    ctx.define("work", handler, lease=lease, max_attempts=MAX_ATTEMPTS)


async def serve(url: str, name: str, concurrency: int, lease: float, seconds: float) -> None:
    async with evq.Context(url) as ctx:

        async def work(payload: Any) -> dict[str, Any]:
            if seconds:
                await asyncio.sleep(seconds)
            return {"n": payload, "by": name}

        define(ctx, lease, work)
        worker = ctx.worker(name=name, concurrency=concurrency)
        print("ready", flush=True)
        await worker.run(handle_signals=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(name)s %(levelname)s %(message)s")
    url, name, concurrency, lease, seconds = sys.argv[1:6]
    asyncio.run(serve(url, name, int(concurrency), float(lease), float(seconds)))


if __name__ == "__main__":
    main()
