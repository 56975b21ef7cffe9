"""`evq demo`: a tour on a real ledger file. Four jobs (one succeeds, one fails twice
then succeeds, one is delayed, one runs out of attempts), a worker that runs them while
progress is shown, then each job's timeline read back from the ledger."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import audit
from .context import Context
from .events import Event
from .files import FILE_MODE
from .jobs import Job
from .ledger import open_ledger
from .retry import Fixed


async def run_demo(where: str | Path, say: Callable[[str], None],
                   file_mode: int = FILE_MODE) -> list[str]:
    """Run the demo on `where`, a file path (made with `file_mode` if new) or a ledger
    URL; returns the ids of the jobs it enqueued."""
    async with Context(where, poll_interval=0.02, file_mode=file_mode) as ctx:
        flaky_calls: dict[str, int] = {}

        @ctx.job(queue="demo")
        async def send_welcome_email(payload: dict[str, Any]) -> dict[str, Any]:
            return {"sent_to": payload["to"]}

        @ctx.job(queue="demo", max_attempts=3, backoff=Fixed(0.2))
        async def charge_card(payload: dict[str, Any], job: Job) -> dict[str, Any]:
            flaky_calls[job.id] = flaky_calls.get(job.id, 0) + 1
            if flaky_calls[job.id] < 3:
                raise ConnectionError(f"payment gateway timed out (try {job.attempt})")
            return {"charged": payload["cents"], "tries": job.attempt}

        @ctx.job(queue="demo")
        async def send_reminder(payload: dict[str, Any]) -> str:
            return f"reminded {payload['to']}"

        @ctx.job(queue="demo", max_attempts=3, backoff=Fixed(0.2))
        def sync_inventory(payload: dict[str, Any]) -> None:
            raise RuntimeError(f"warehouse {payload['warehouse']} is unreachable")

        ids = [
            await send_welcome_email.enqueue({"to": "ada@example.com"}),
            await charge_card.enqueue({"cents": 4200}),
            await send_reminder.enqueue({"to": "grace@example.com"}, delay=1.0),
            await sync_inventory.enqueue({"warehouse": "north"}),
        ]
        say(f"ledger: {ctx.location}")
        say(f"enqueued {len(ids)} jobs; starting a worker\n")
        worker = ctx.worker(queues=["demo"], concurrency=4, name="demo-worker")
        ours = set(ids)
        finished: set[str] = set()

        def progress(event: Event) -> None:
            if event.job_id not in ours:
                return
            say("  " + audit.event_line(event))
            if event.kind in ("success", "expire", "fail"):
                finished.add(event.job_id)
                if len(finished) == len(ours):
                    worker.stop()

        ctx.add_event_handler(progress)
        await asyncio.wait_for(worker.run(), timeout=30)
        await ctx.flush_events()
    return ids


def timelines(where: str | Path, ids: list[str]) -> list[str]:
    ledger = open_ledger(where)
    lines: list[str] = []
    for job_id in ids:
        lines.extend(audit.history_lines(ledger.read_job(job_id),
                                         ledger.job_history(job_id)))
        lines.append("")
    return lines
