"""The dashboard's pages, each from a few indexed reads: the overview (jobs by queue and
state, the last minutes' figures), the jobs list with its filters (kept in the URL, one
page at a time), and a job with its whole timeline from the ledger."""

from __future__ import annotations

import time
from typing import Any

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .. import audit, stats
from ..errors import InvalidInput
from ..jobs import JobState
from ..ledger.audit_records import JobQuery
from ..moments import moment
from .site import Site

STATES = [state.value for state in JobState]
FIGURES_OVER = 900.0  # seconds of events the overview's figures cover
PAGE = 50
MOST_PER_PAGE = 500
LONGEST_TEXT = 1000


def site_of(request: Request) -> Site:
    site: Site = request.app.state.evq
    return site


def render(request: Request, template: str, status: int = 200, **values: Any) -> Response:
    site = site_of(request)
    return site.templates.TemplateResponse(
        request, template, {"site": site, **values}, status_code=status)


async def overview(request: Request) -> Response:
    site = site_of(request)
    counts = await site.read(site.ledger.job_counts)
    queues: dict[str, dict[str, int]] = {}
    for queue, state, n in counts:
        queues.setdefault(queue, {})[state] = n
    totals = {state: sum(by_state.get(state, 0) for by_state in queues.values())
              for state in STATES}
    found, window = await site.read(stats.compute, site.ledger,
                                    time.time() - FIGURES_OVER, None)
    figures = [found[name].as_dict(window) for name in sorted(found)]
    return render(request, "overview.html", title="Overview", live=True, queues=queues,
                  totals=totals, states=STATES, figures=figures, minutes=FIGURES_OVER / 60)


def job_query(params: QueryParams) -> JobQuery:
    """The jobs list's filters from its URL; InvalidInput names a bad one."""
    def text(name: str) -> str | None:
        value = (params.get(name) or "").strip()
        if len(value) > LONGEST_TEXT:
            raise InvalidInput(f"{name} is longer than {LONGEST_TEXT} characters")
        return value or None

    state = text("state")
    if state is not None and state not in STATES:
        raise InvalidInput(f"state must be one of {', '.join(STATES)}, not {state!r}")
    since, until = text("since"), text("until")
    return JobQuery(
        state=state, queue=text("queue"), name=text("name"), text=text("text"),
        before=_whole(text("before"), "before", 1, None),
        since=None if since is None else moment(since, "since"),
        until=None if until is None else moment(until, "until"),
        limit=_whole(text("limit"), "limit", 1, MOST_PER_PAGE) or PAGE)


def _whole(value: str | None, name: str, least: int, most: int | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or int(value) < least or (most is not None and int(value) > most):
        upto = "" if most is None else f" to {most}"
        raise InvalidInput(f"{name} must be a whole number from {least}{upto}, not {value!r}")
    return int(value)


async def jobs(request: Request) -> Response:
    site = site_of(request)
    query = job_query(request.query_params)
    found = await site.read(site.ledger.job_page, query)
    older = None
    if len(found) == query.limit:
        older = str(request.url.include_query_params(before=found[-1].enqueue_position))
    return render(request, "jobs.html", title="Jobs", live=True, jobs=found, states=STATES,
                  form=request.query_params, older=older,
                  newest=str(request.url.remove_query_params("before")))


async def job(request: Request) -> Response:
    site = site_of(request)
    job_id = await site.read(audit.resolve_job_id, site.ledger, request.path_params["job_id"])
    record = await site.read(site.ledger.read_job, job_id)
    events = await site.read(site.ledger.job_history, job_id)
    enqueued = next((e for e in events if e.kind == "enqueue"), None)
    return render(request, "job.html", title=f"Job {audit.short_id(job_id)}", live=True,
                  job_id=job_id,
                  job=record, events=events,
                  payload=None if enqueued is None else enqueued.data.get("payload"),
                  actions=not site.read_only and record is not None)


async def queues(request: Request) -> Response:
    """Each queue's jobs by state, and the job definitions deployed on it with their
    settings and schedules (last and next fire)."""
    site = site_of(request)
    counts = await site.read(site.ledger.job_counts)
    deployed = await site.read(site.ledger.definitions)
    by_queue: dict[str, dict[str, Any]] = {}
    for queue, state, n in counts:
        by_queue.setdefault(queue, {"states": {}, "jobs": []})["states"][state] = n
    for definition in deployed:
        by_queue.setdefault(definition.queue, {"states": {}, "jobs": []})["jobs"].append(
            definition)
    return render(request, "queues.html", title="Queues and schedules", live=True,
                  queues=by_queue, states=STATES)


async def subscribers(request: Request) -> Response:
    """The durable event handlers: where each stands, how far behind, who holds it."""
    site = site_of(request)
    found = await site.read(site.ledger.cursor_states)
    return render(request, "subscribers.html", title="Durable subscribers", live=True,
                  subscribers=found)


async def healthz(request: Request) -> Response:
    site = site_of(request)
    await site.read(site.ledger.check_schema)
    return PlainTextResponse("ok\n")
