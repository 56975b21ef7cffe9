"""The dashboard's pages, each from a few indexed reads: the overview (jobs by queue and
state, the last minutes' figures), the jobs list with its filters (kept in the URL, one
page at a time), a job with its whole timeline, the queues with their definitions and
schedules, and the durable subscribers. Every page can travel back: with `at` (a time)
or `upto` (a position) in its URL it shows the ledger as it stood then (travel.py)."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .. import audit, stats
from ..errors import EvqError, InvalidInput, UnknownJob
from ..events import TIME_STEP, Event, EventKind
from ..jobs import JobState
from ..ledger import Ledger
from ..ledger.audit_records import JobFilter, JobQuery
from ..moments import is_ago, moment
from . import charts
from .site import Site
from .travel import Moment

STATES = [state.value for state in JobState]
FIGURES_OVER = 900.0  # seconds of events the overview's figures cover
CHART_STEP, CHART_SLOTS = 60.0, 60  # the chart: jobs finished per minute, for an hour
FIGURES_FROM = 5_000  # events at most (about 1,000 jobs): on a busy ledger, the newest seconds
PAGE = 50
SCANNED = 10_000  # jobs a search beyond the state looks at per page, at most
MOST_PER_PAGE = 500
LONGEST_TEXT = 1000
LARGEST = 2**63 - 1  # positions are 64-bit
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Forbidden(EvqError):
    """A request the dashboard refuses (read-only, or a form it did not make)."""


class NotFound(EvqError):
    """A page or an action the dashboard does not have."""


def site_of(request: Request) -> Site:
    site: Site = request.app.state.evq
    return site


def render(request: Request, template: str, status: int = 200, **values: Any) -> Response:
    site = site_of(request)
    values.setdefault("moment", None)
    return site.templates.TemplateResponse(
        request, template, {"site": site, **values}, status_code=status)


def text_of(params: Mapping[str, Any], name: str) -> str | None:
    """A text a user gave (stripped; None when empty). InvalidInput for one too long or
    holding a control character (no name, id or payload text search needs one)."""
    given = params.get(name)
    value = given.strip() if isinstance(given, str) else ""
    if len(value) > LONGEST_TEXT:
        raise InvalidInput(f"{name} is longer than {LONGEST_TEXT} characters")
    if _CONTROL.search(value):
        raise InvalidInput(f"{name} holds a control character")
    return value or None


def whole(value: str | None, name: str, least: int, most: int = LARGEST) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or not least <= int(value) <= most:
        raise InvalidInput(f"{name} must be a whole number from {least} to {most}, "
                           f"not {value!r}")
    return int(value)


async def moment_of(request: Request) -> Moment | None:
    """Where the page travels to (`at` or `upto` in its URL), if anywhere."""
    site = site_of(request)
    at, upto = text_of(request.query_params, "at"), text_of(request.query_params, "upto")
    if at is not None and upto is not None:
        raise InvalidInput("give at (a time) or upto (a position), not both")
    if at is not None:
        asked = moment(at, "at")
        # Times are shown rounded to the microsecond: "at T" takes every event shown as
        # T, stored up to half a microsecond later (a whole one, for the float's sake).
        found = await site.read(site.ledger.last_position, asked + TIME_STEP)
        sealed = await site.read(_last_seal_upto, site.ledger, found)
        # A time given as how long ago is kept as the time it was when first read, so
        # that every link goes on showing the same moment.
        shown = datetime.fromtimestamp(asked, UTC).isoformat() if is_ago(at) else at
        return Moment(sealed, shown, "at", asked + TIME_STEP)
    if upto is not None:
        position = whole(upto, "upto", 1)
        assert position is not None
        head = await site.read(site.ledger.last_position)
        sealed = await site.read(_last_seal_upto, site.ledger, min(position, head))
        return Moment(sealed, upto, "upto", None)
    return None




class Relocated(Exception):
    """The page is at another URL: this one's time said how long ago, and the page is
    sent to the moment that meant (so reloads and links stay on that one moment)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


async def ledger_of(request: Request) -> tuple[Ledger, Moment | None]:
    """The ledger a page reads: the real one, or the one built for its moment."""
    site = site_of(request)
    travel = await moment_of(request)
    if travel is None:
        return site.ledger, None
    if travel.key == "at" and travel.asked != text_of(request.query_params, "at"):
        raise Relocated(_path_and_query(request.url.include_query_params(at=travel.asked)))
    return await site.travels.at(site.ledger, travel), travel


async def overview(request: Request) -> Response:
    site = site_of(request)
    ledger, travel = await ledger_of(request)
    counts = await site.read(ledger.job_counts)
    queues: dict[str, dict[str, int]] = {}
    for queue, state, n in counts:
        queues.setdefault(queue, {})[state] = n
    totals = {state: sum(by_state.get(state, 0) for by_state in queues.values())
              for state in STATES}
    end = time.time() if travel is None else travel.time
    if travel is not None and end is None:  # a position: the figures end at its time
        end = await site.read(_time_at, ledger, travel.position)
    found, window = await site.read(
        stats.compute, ledger, None if end is None else end - FIGURES_OVER, end,
        FIGURES_FROM)
    figures = [found[name].as_dict(window) for name in sorted(found)]
    now = time.time() if end is None else end
    first = (now // CHART_STEP - CHART_SLOTS + 1) * CHART_STEP  # whole minutes, this one last
    finished = await site.read(ledger.finished_over_time, first,
                               first + CHART_SLOTS * CHART_STEP, CHART_STEP)
    backlog = [(queue, n, now - oldest)
               for queue, n, oldest in await site.read(ledger.backlog, now)]
    return render(request, "overview.html", title="Overview", live=travel is None,
                  moment=travel, queues=queues, totals=totals, states=STATES,
                  figures=figures, minutes=window / 60, backlog=backlog,
                  chart=charts.finished_chart(finished, first, CHART_STEP, CHART_SLOTS))


def newest_seal(ledger: Ledger, position: int) -> Event | None:
    """The seal of the newest commit that ended at or before `position` (None: before
    the first)."""
    return next((event for event in ledger.read_events_back(position + 1)
                 if event.kind == EventKind.SEAL), None)


def _last_seal_upto(ledger: Ledger, position: int) -> int:
    """The newest commit's end at or before `position` (its seal): the ledger stood
    there between commits (0: before the first)."""
    seal = newest_seal(ledger, position)
    return 0 if seal is None else seal.position


def _time_at(ledger: Ledger, position: int) -> float | None:
    newest = next(iter(ledger.read_events_back(position + 1)), None)
    return None if newest is None else newest.timestamp


def job_query(params: QueryParams) -> JobQuery:
    """The jobs list's filters from its URL; InvalidInput names a bad one."""
    state = text_of(params, "state")
    if state is not None and state not in STATES:
        raise InvalidInput(f"state must be one of {', '.join(STATES)}, not {state!r}")
    since, until = text_of(params, "since"), text_of(params, "until")
    return JobQuery(
        state=state, queue=text_of(params, "queue"), name=text_of(params, "name"),
        text=text_of(params, "text"), before=whole(text_of(params, "before"), "before", 1),
        since=None if since is None else moment(since, "since"),
        until=None if until is None else moment(until, "until"),
        limit=whole(text_of(params, "limit"), "limit", 1, MOST_PER_PAGE) or PAGE)


def _path_and_query(url: Any) -> str:
    return str(url.path) + (f"?{url.query}" if url.query else "")


async def jobs(request: Request) -> Response:
    """A page of the jobs list. Criteria beyond the state (which an index serves) look at
    the newest SCANNED jobs at most, so a page takes a bounded time on any ledger; when
    they stop short, the page says so and links to the search's next stretch."""
    site = site_of(request)
    query = attrs.evolve(job_query(request.query_params), scan=SCANNED)
    ledger, travel = await ledger_of(request)
    found = await site.read(ledger.job_page, query)
    older = None
    if found.jobs and len(found.jobs) == query.limit:
        older = found.jobs[-1].enqueue_position
    searched = found.searched_to
    return render(request, "jobs.html", title="Jobs", live=travel is None, moment=travel,
                  jobs=found.jobs, states=STATES, form=request.query_params,
                  older=_before(request, older), searched=_before(request, searched),
                  scanned=SCANNED,
                  newest=_path_and_query(request.url.remove_query_params("before")))


def _before(request: Request, position: int | None) -> str | None:
    """This page's URL going on before `position`."""
    if position is None:
        return None
    return _path_and_query(request.url.include_query_params(before=position))


async def job_id_of(request: Request, ledger: Ledger) -> str:
    """The job a request names (`/jobs/ID`, or `?id=` for an id a path cannot hold),
    by its full id, its short id or a unique part of it."""
    site = site_of(request)
    given = request.path_params.get("job_id") or request.query_params.get("id") or ""
    if _CONTROL.search(given):
        raise UnknownJob("no such job: a job id holds no control character")
    return await site.read(audit.resolve_job_id, ledger, given)


async def job(request: Request) -> Response:
    site = site_of(request)
    ledger, travel = await ledger_of(request)
    job_id = await job_id_of(request, ledger)
    record = await site.read(ledger.read_job, job_id)
    events = await site.read(ledger.job_history, job_id)
    enqueued = next((e for e in events if e.kind == "enqueue"), None)
    in_flow = record is not None and (record.parent_id is not None or record.children > 0)
    flow = await site.read(ledger.read_flow, job_id) if in_flow else None
    return render(request, "job.html", title=f"Job {audit.short_id(job_id)}",
                  live=travel is None, moment=travel, job_id=job_id, job=record,
                  events=events, flow=flow,
                  payload=None if enqueued is None else enqueued.data.get("payload"),
                  actions=not site.read_only and record is not None and travel is None,
                  delayed=record is not None and record.scheduled())


async def queues(request: Request) -> Response:
    """Each queue's jobs by state, and the job definitions deployed on it with their
    settings and schedules (next fire)."""
    site = site_of(request)
    ledger, travel = await ledger_of(request)
    counts = await site.read(ledger.job_counts)
    deployed = await site.read(ledger.definitions)
    paused = set(await site.read(ledger.paused_queues))
    by_queue: dict[str, dict[str, Any]] = {}
    for queue, state, n in counts:
        by_queue.setdefault(queue, {"states": {}, "jobs": []})["states"][state] = n
    for definition in deployed:
        by_queue.setdefault(definition.queue, {"states": {}, "jobs": []})["jobs"].append(
            definition)
    for name in paused:
        by_queue.setdefault(name, {"states": {}, "jobs": []})
    return render(request, "queues.html", title="Queues and schedules",
                  live=travel is None, moment=travel, queues=by_queue, states=STATES,
                  paused=paused)


async def workers(request: Request) -> Response:
    """The workers that announced themselves (when each was last seen, where it runs,
    what it can run) and the jobs each holds running now, with their leases."""
    site = site_of(request)
    ledger, travel = await ledger_of(request)
    seen = await site.read(ledger.workers)
    running = await site.read(ledger.find_jobs, JobFilter(state="running"))
    held: dict[str, list[Any]] = {}
    for record in running:
        held.setdefault(record.worker or "", []).append(record)
    return render(request, "workers.html", title="Workers and leases", live=travel is None,
                  moment=travel, workers=seen, held=held, now=time.time())


async def subscribers(request: Request) -> Response:
    """The durable event handlers: where each stands, how far behind, who holds it."""
    site = site_of(request)
    ledger, travel = await ledger_of(request)
    found = await site.read(ledger.cursor_states)
    return render(request, "subscribers.html", title="Durable subscribers",
                  live=travel is None, moment=travel, subscribers=found)


async def healthz(request: Request) -> Response:
    """`ok` once the ledger answers; 503 otherwise, without saying more to a caller who
    needs no credentials (the dashboard's pages say why)."""
    site = site_of(request)
    try:
        await site.read(site.ledger.check_schema)
    except EvqError:
        return PlainTextResponse("unavailable\n", status_code=503)
    return PlainTextResponse("ok\n")
