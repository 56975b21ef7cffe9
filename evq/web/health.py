"""The ledger's health: where it is, how big (and its WAL), its head (position and the
newest seal's hash), and `evq verify` run in the background from a button, how far it
has got while it runs, its report kept for the page (one run at a time; a new run
replaces the last report). Always the ledger as it is now."""

from __future__ import annotations

import asyncio
import functools
import time

import attrs
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .. import verify as verifying
from ..errors import EvqError
from ..ledger import Ledger
from .actions import checked_form
from .pages import newest_seal, render, site_of


@attrs.define
class VerifyRun:
    """The dashboard's latest verify: running since `started` (the latest (stage, done,
    total) it reported: `progress`), or done (`report`)."""

    started: float
    finished: float | None = None
    report: verifying.Report | None = None
    error: str | None = None
    progress: tuple[str, int, int] | None = None
    task: asyncio.Task[None] | None = attrs.field(default=None, repr=False)

    def heard(self, stage: str, done: int, total: int) -> None:
        """Verify's progress: called in its worker thread, read whole by the page."""
        self.progress = (stage, done, total)


async def page(request: Request) -> Response:
    site = site_of(request)  # the ledger as it is now: health does not travel
    size = await site.read(site.ledger.storage_size)
    head = await site.read(site.ledger.last_position)
    head_hash = await site.read(_seal_hash, site.ledger, head)
    run: VerifyRun | None = site.verifying
    return render(request, "health.html", title="Ledger health", live=True,
                  size=size, head=head, head_hash=head_hash, run=run, now=time.time(),
                  outcome=None if run is None or run.report is None
                  else run.report.outcome.value)


async def start_verify(request: Request) -> Response:
    site = site_of(request)
    # Verify writes nothing to the ledger: a read-only dashboard may run it too.
    await checked_form(request, acting=False)
    running = site.verifying
    if running is None or running.finished is not None:
        run = VerifyRun(time.time())
        run.task = asyncio.get_running_loop().create_task(_verify(site.ledger, run))
        site.verifying = run
    return RedirectResponse(request.url_for("health").path, status_code=303)


async def _verify(ledger: Ledger, run: VerifyRun) -> None:
    try:
        run.report = await run_in_threadpool(
            functools.partial(verifying.verify_ledger, ledger, progress=run.heard))
    except EvqError as exc:
        run.error = str(exc)
    except Exception as exc:  # shown on the page rather than lost in a task
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        run.finished = time.time()


def _seal_hash(ledger: Ledger, head: int) -> str | None:
    """The hash of the newest seal at or before `head` (the head hash `evq verify`
    prints), or None before the first commit."""
    seal = newest_seal(ledger, head)
    found = None if seal is None else seal.data.get("hash")
    return None if found is None else str(found)
