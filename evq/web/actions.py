"""What an operator does from the dashboard (cancel, retry, delete a job, run a delayed
one now): each one
confirmed on a page of its own first, checked against the form's CSRF token and the
request's origin, and written through the same ledger operations as `evq cancel` and the
rest, so each is an event like any other transition."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .. import admin, audit
from .guard import csrf_ok, same_origin
from .pages import Forbidden, NotFound, render, site_of, text_of
from .site import job_path

ACTIONS: dict[str, Callable[..., Any]] = {
    "cancel": admin.cancel, "retry": admin.retry, "delete": admin.delete,
    "run_now": admin.run_now}
WHAT = {"cancel": "Cancel", "retry": "Retry (as a new job)", "delete": "Delete",
        "run_now": "Run now (a delayed job)"}
DEFAULT_REASON = "from the dashboard"


def action_of(request: Request) -> str:
    """The job action a request's path names (NotFound for another word)."""
    action: str = request.path_params["action"]
    if action not in ACTIONS:
        raise NotFound(f"there is no action {action!r}")
    return action


async def checked_form(request: Request, *, acting: bool = True) -> Any:
    """The posted form, once it is known to come from one of this dashboard's pages
    (its CSRF token, and an Origin of this site); Forbidden otherwise, or when the
    dashboard is read-only and the form acts on jobs or queues (`acting`)."""
    site = site_of(request)
    if acting and site.read_only:
        raise Forbidden("this dashboard is read-only (started with --read-only)")
    form = await request.form()
    token = form.get("csrf")
    if not same_origin(request.headers.get("origin"), request.headers.get("host"),
                       site.allowed) or \
            not csrf_ok(site.secret, token if isinstance(token, str) else None):
        raise Forbidden("the form came from another site, or from before the dashboard "
                        "restarted: reload the page and try again")
    return form


async def pause(request: Request) -> Response:
    """Pause or resume a queue (not destructive: no confirmation), then back to the
    queues page."""
    site = site_of(request)
    how = request.path_params["how"]
    if how not in ("pause", "resume"):
        raise NotFound(f"a queue can be paused or resumed, not {how!r}")
    form = await checked_form(request)
    queue = text_of(form, "queue") or ""
    paused = how == "pause"
    await site.read(admin.pause, site.ledger, queue, paused,
                    text_of(form, "reason") or DEFAULT_REASON)
    return RedirectResponse(request.url_for("queues").path, status_code=303)


async def act(request: Request) -> Response:
    site = site_of(request)
    action = action_of(request)
    form = await checked_form(request)
    given_id = form.get("job_id")
    job_id = await site.read(audit.resolve_job_id, site.ledger,
                             given_id if isinstance(given_id, str) else "")
    reason = text_of(form, "reason") or ""
    if form.get("confirm") != "yes":
        record = await site.read(site.ledger.read_job, job_id)
        return render(request, "confirm.html", title=WHAT[action], action=action,
                      what=WHAT[action], job_id=job_id, job=record, reason=reason)
    done = await site.read(ACTIONS[action], site.ledger, job_id, reason or DEFAULT_REASON)
    shown = done if action == "retry" else job_id
    return RedirectResponse(job_path(request, shown), status_code=303)
