"""A worker process that is meant to be killed: run by tests/acceptance/test_crash.py.

Usage: python crash_worker.py LEDGER CONCURRENCY LEASE

It serves the job `slow` as worker "victim". On a job's first attempt the handler prints
`started <job_id>` on stdout and then hangs forever (the test kills the process with
SIGKILL while it hangs); on any later attempt it returns a result. Stdout carries only
these lines and `ready`; evq's warnings go to stderr.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import evq


async def serve(db: str, concurrency: int, lease: float) -> None:
    async with evq.Context(db) as ctx:

        @ctx.job(lease=lease, max_attempts=3)
        async def slow(payload: Any, job: evq.Job) -> dict[str, Any]:
            if job.attempt == 1:
                print(f"started {job.id}", flush=True)
                await asyncio.Event().wait()  # never set: hangs until the process dies
            return {"payload": payload, "attempt": job.attempt, "by": "victim"}

        worker = ctx.worker(concurrency=concurrency, name="victim")
        print("ready", flush=True)
        await worker.run()


def main() -> None:
    db, concurrency, lease = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    asyncio.run(serve(db, concurrency, lease))


if __name__ == "__main__":
    main()
