"""A worker whose disk fills up under it: run by tests/acceptance/test_disk_full.py.

Usage: python full_worker.py LEDGER CONCURRENCY

Serves the job `work` as worker "filler". SIGUSR1 lowers this process's RLIMIT_FSIZE
soft limit to one byte (SIGXFSZ ignored, so a write past it fails and SQLite reports the
disk full) and then lets every handler waiting on it return; SIGUSR2 puts the limit
back. A handler prints `started <job_id>`, and waits for SIGUSR1 only while the limit
has never been lowered. Stdout also carries `ready`, `lowered`, `raised`, and one
`log <event> <kind>` line per evq warning or error. SIGTERM stops it gracefully.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import sys
from typing import Any

import evq


class Lines(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "evq", None) or {}
        print(f"log {fields.get('event')} {fields.get('kind', '-')}", flush=True)


async def serve(db: str, concurrency: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    full = asyncio.Event()

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))
        print("lowered", flush=True)
        full.set()

    def restore() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        print("raised", flush=True)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lower)
    loop.add_signal_handler(signal.SIGUSR2, restore)
    async with evq.Context(db) as ctx:

        @ctx.job(lease=60)
        async def work(payload: Any, job: evq.Job) -> Any:
            print(f"started {job.id}", flush=True)
            await full.wait()
            return payload

        worker = ctx.worker(name="filler", concurrency=concurrency)
        print("ready", flush=True)
        await worker.run(handle_signals=True)


def main() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    logger = logging.getLogger("evq")
    logger.addHandler(Lines(logging.WARNING))
    logger.setLevel(logging.WARNING)
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))


if __name__ == "__main__":
    main()
