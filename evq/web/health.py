"""The ledger's health: where it is, how big (and its WAL), its head, and `evq verify`
run in the background from a button, its report kept for the page (one run at a time;
the last report stays until the next run ends)."""

from __future__ import annotations

import asyncio
import time

import attrs
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .. import verify as verifying
from ..errors import EvqError
from ..ledger import Ledger
from .guard import csrf_ok, same_origin
from .pages import Forbidden, ledger_of, render, site_of


@attrs.define
class VerifyRun:
    """The dashboard's latest verify: running since `started`, or done (`report`)."""

    started: float
    finished: float | None = None
    report: verifying.Report | None = None
    error: str | None = None
    task: asyncio.Task[None] | None = attrs.field(default=None, repr=False)


async def page(request: Request) -> Response:
    site = site_of(request)
    ledger, travel = await ledger_of(request)
    size = await site.read(ledger.storage_size)
    head = await site.read(ledger.last_position)
    run: VerifyRun | None = site.verifying
    return render(request, "health.html", title="Ledger health", live=travel is None,
                  moment=travel, size=size, head=head, run=run, now=time.time(),
                  outcome=None if run is None or run.report is None
                  else run.report.outcome.value)


async def start_verify(request: Request) -> Response:
    site = site_of(request)
    form = await request.form()
    token = form.get("csrf")
    if not same_origin(request.headers.get("origin"), request.headers.get("host"),
                       site.allowed) or \
            not csrf_ok(site.secret, token if isinstance(token, str) else None):
        raise Forbidden("the form came from another site, or from before the dashboard "
                        "restarted: reload the page and try again")
    running = site.verifying
    if running is None or running.finished is not None:
        run = VerifyRun(time.time())
        run.task = asyncio.get_running_loop().create_task(_verify(site.ledger, run))
        site.verifying = run
    return RedirectResponse(request.url_for("health").path, status_code=303)


async def _verify(ledger: Ledger, run: VerifyRun) -> None:
    try:
        run.report = await run_in_threadpool(verifying.verify_ledger, ledger)
    except EvqError as exc:
        run.error = str(exc)
    finally:
        run.finished = time.time()
