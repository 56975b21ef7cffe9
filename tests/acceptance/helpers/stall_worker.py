"""A worker for tests/acceptance/test_lock_stall.py.

Usage: python stall_worker.py LEDGER NAME LEASE BUSY_TIMEOUT GATE_FILE

Serves the job `long` as worker NAME (busy_timeout BUSY_TIMEOUT seconds). The handler
prints `started <job_id> <attempt>` and returns once GATE_FILE exists (it looks every
20 ms: the job's own work, not the test's waiting). Stdout also carries `ready` and one
`log <event> <kind>` line per evq warning or error; SIGTERM stops the worker gracefully.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import evq


class Lines(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "evq", None) or {}
        print(f"log {fields.get('event')} {fields.get('kind', '-')}", flush=True)


async def serve(db: str, name: str, lease: float, busy_timeout: float, gate: str) -> None:
    async with evq.Context(db, busy_timeout=busy_timeout) as ctx:

        @ctx.job(lease=lease, max_attempts=5)
        async def long(payload: Any, job: evq.Job) -> str:
            print(f"started {job.id} {job.attempt}", flush=True)
            while not os.path.exists(gate):
                await asyncio.sleep(0.02)
            return name

        worker = ctx.worker(name=name)
        print("ready", flush=True)
        await worker.run(handle_signals=True)


def main() -> None:
    logger = logging.getLogger("evq")
    logger.addHandler(Lines(logging.WARNING))
    logger.setLevel(logging.WARNING)
    db, name, lease, busy, gate = sys.argv[1:6]
    asyncio.run(serve(db, name, float(lease), float(busy), gate))


if __name__ == "__main__":
    main()
