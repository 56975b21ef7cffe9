"""The dashboard's ASGI app: its routes, the guard every request passes (credentials,
security headers), and typed evq errors shown as pages (never a traceback)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..context import Context
from ..errors import (
    DuplicateJob,
    EvqError,
    InvalidInput,
    JobStateConflict,
    LedgerNotFound,
    LedgerSchemaError,
    LedgerUnavailable,
    UnknownJob,
)
from ..ledger import Ledger, open_ledger
from . import actions, bulk, health, live, metrics, pages
from .guard import HEADERS, Auth, host_allowed, host_name, new_secret
from .site import STATIC, Site
from .travel import StillBuilding

OPEN_PATHS = frozenset(("/healthz",))  # answered without credentials


def app(source: Context | Ledger | str | Path, *, read_only: bool = False,
        auth: Auth | None = None, allow_hosts: Iterable[str] = (),
        live_interval: float = 1.0) -> Starlette:
    """The dashboard for a ledger: an open (or not yet opened) Context's, a Ledger, or a
    ledger path or postgresql:// URL. `auth`: the credentials every request but
    /healthz must carry (default: from EVQ_WEB_TOKEN / EVQ_WEB_PASSWORD, none if unset).
    Without credentials it answers only requests addressed to loopback names
    (127.0.0.1, localhost, [::1]) or to `allow_hosts` (for an application that
    authenticates its users itself, in front of the mounted dashboard). `read_only`: no
    actions. `live_interval`: seconds between the live pages' looks at the head."""
    ledger = source.ledger if isinstance(source, Context) else (
        open_ledger(source) if isinstance(source, str | Path) else source)
    site = Site(ledger, read_only, Auth.from_env() if auth is None else auth, new_secret(),
                frozenset(host_name(host) for host in allow_hosts), live_interval)
    routes = [
        Route("/", pages.overview, name="overview"),
        Route("/jobs", pages.jobs, name="jobs"),
        Route("/jobs/{job_id}", pages.job, name="job"),
        Route("/job", pages.job, name="job_by_id"),
        Route("/actions/{action}", actions.act, methods=["POST"], name="act"),
        Route("/queues/{how:str}", actions.pause, methods=["POST"], name="pause"),
        Route("/bulk/{action}", bulk.bulk, methods=["POST"], name="bulk"),
        Route("/bulk-done/{key}", bulk.done, name="bulk_done"),
        Route("/queues", pages.queues, name="queues"),
        Route("/workers", pages.workers, name="workers"),
        Route("/subscribers", pages.subscribers, name="subscribers"),
        Route("/health", health.page, name="health"),
        Route("/health/verify", health.start_verify, methods=["POST"], name="verify"),
        Route("/metrics", metrics.endpoint, name="metrics"),
        Route("/healthz", pages.healthz, name="healthz"),
        Route("/live", live.stream, name="live"),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        site.travels.close()  # the past ledgers' temporary folders

    web = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        EvqError: _shown, StillBuilding: _building, pages.Relocated: _relocated})
    web.state.evq = site
    web.add_middleware(_Guard, auth=site.auth, allowed=site.allowed)
    return web


_STATUS = ((UnknownJob, 404), (pages.NotFound, 404), (InvalidInput, 400),
           (pages.Forbidden, 403), (JobStateConflict, 409), (DuplicateJob, 409),
           (LedgerNotFound, 503), (LedgerSchemaError, 503), (LedgerUnavailable, 503))


async def _shown(request: Request, exc: Exception) -> Response:
    status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 500)
    if request.url.path.endswith(("/healthz", "/metrics")):
        return PlainTextResponse(f"{exc}\n", status_code=status)
    return pages.render(request, "error.html", status, title="Error", message=str(exc))


async def _relocated(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, pages.Relocated)
    return RedirectResponse(exc.url, status_code=303)


async def _building(request: Request, exc: Exception) -> Response:
    """A page whose moment is still being built: how far it has got; it reloads itself
    (202: the page asked for is not there yet)."""
    assert isinstance(exc, StillBuilding)
    return pages.render(request, "building.html", 202, title="Travelling back",
                        moment=exc.moment, done=exc.done, total=exc.total)


class _Guard:
    """Every request but /healthz carries the credentials (when some are set); every
    response carries the security headers."""

    def __init__(self, app: ASGIApp, auth: Auth, allowed: frozenset[str]) -> None:
        self.app = app
        self.auth = auth
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not host_allowed(headers.get("host"), self.auth, self.allowed):
            refused = PlainTextResponse(
                "this dashboard has no credentials set, so it answers only requests "
                "addressed to 127.0.0.1 or localhost: set EVQ_WEB_PASSWORD or "
                "EVQ_WEB_TOKEN, or allow this host name (evq.web.app(..., allow_hosts=))\n",
                status_code=421, headers=HEADERS)
            await refused(scope, receive, send)
            return
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):  # mounted inside another application
            path = path[len(root):] or "/"
        if path not in OPEN_PATHS and not self.auth.allows(headers.get("authorization")):
            challenge = {"www-authenticate": 'Basic realm="evq"'} if self.auth.password else {}
            denied = PlainTextResponse("authentication required\n", status_code=401,
                                       headers={**challenge, **HEADERS})
            await denied(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(HEADERS)
            await send(message)

        await self.app(scope, receive, with_headers)
