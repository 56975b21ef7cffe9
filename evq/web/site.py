"""What every request of one dashboard shares: the ledger it shows, whether it may act,
its credentials and CSRF secret, and how values are shown (templates and their
filters). Reads and actions go to the ledger's synchronous side in a worker thread, so a
slow read never holds up the event loop."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import attrs
import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.templating import Jinja2Templates

from .. import audit, codec
from ..ledger import Ledger
from .guard import Auth, csrf_token
from .travel import Moment, Travels

T = TypeVar("T")

# Characters that could disguise what is shown: controls other than the newline and
# invisible format characters (bidi overrides, zero-width joiners).
_HIDDEN = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e"
                     "\u2066-\u2069\ufeff]")


_PATH_SAFE = re.compile(r"[A-Za-z0-9_.:-]+")


def visible(value: object) -> str:
    """`value` as text with every control and invisible format character written as an
    escape (newlines kept); HTML escaping is the templates' own (autoescape)."""
    text = value if isinstance(value, str) else str(value)
    return _HIDDEN.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def pretty(value: Any) -> str:
    """A payload, result or error as indented JSON, made visible."""
    return visible(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def when(moment: object) -> str:
    """A time from a record (a datetime) or as stored (epoch seconds), or "-"."""
    if not isinstance(moment, datetime):
        moment = codec.stored_datetime(moment)
    return "-" if moment is None else audit.fmt_time(moment)


def duration(seconds: float) -> str:
    """How long, at a glance: 45s, 12m 5s, 3h 20m, 2d 4h."""
    whole = max(0, int(seconds))
    for size, unit, smaller, small_unit in ((86400, "d", 3600, "h"), (3600, "h", 60, "m"),
                                            (60, "m", 1, "s")):
        if whole >= size:
            rest = whole % size // smaller
            return f"{whole // size}{unit}" + (f" {rest}{small_unit}" if rest else "")
    return f"{whole}s"


def link(request: Request, name: str, query: dict[str, Any] | None = None,
         moment: Moment | None = None, **params: Any) -> str:
    """The path of page `name` with `query`, keeping `moment` (where a page travelled)."""
    wanted = {key: value for key, value in (query or {}).items() if value is not None}
    if moment is not None:
        wanted[moment.key] = moment.asked
    if name == "job" and not _PATH_SAFE.fullmatch(str(params["job_id"])):
        # An imported id may hold '/', '?', '#' or '%': it goes in the query instead.
        name, wanted = "job_by_id", {"id": params.pop("job_id"), **wanted}
    path = str(request.url_for(name, **params).path)
    return path + ("?" + urlencode(wanted) if wanted else "")


def job_path(request: Request, job_id: str) -> str:
    return link(request, "job", job_id=job_id)


@jinja2.pass_context
def href(context: Any, name: str, query: dict[str, Any] | None = None, **params: Any) -> str:
    """`link` for templates: the page's request and moment are the context's."""
    return link(context["request"], name, query, context.get("moment"), **params)


def now_url(request: Request) -> str:
    """This page as it is now: its URL without the moment (or the page it was on)."""
    url = request.url.remove_query_params(["at", "upto", "before"])
    return str(url.path) + (f"?{url.query}" if url.query else "")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("evq.web", "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(shown=audit.printable, visible=visible, pretty=pretty, when=when,
                       short=audit.short_id, describe=audit.describe, duration=duration)
    env.globals.update(href=href, now_url=now_url)
    return env


@attrs.define
class Site:
    ledger: Ledger
    read_only: bool
    auth: Auth
    secret: bytes
    allowed: frozenset[str] = frozenset()  # host names answered without credentials
    live_interval: float = 1.0  # seconds between the live stream's looks at the head
    travels: Travels = attrs.field(factory=Travels)
    verifying: Any = None  # health.VerifyRun: the dashboard's latest verify
    selections: dict[str, Any] = attrs.field(factory=dict)  # bulk.Selection by key
    templates: Jinja2Templates = attrs.field(
        factory=lambda: Jinja2Templates(env=_environment()))

    @property
    def csrf(self) -> str:
        return csrf_token(self.secret)

    @property
    def location(self) -> str:
        return str(self.ledger.location)

    async def read(self, call: Callable[..., T], *args: Any) -> T:
        """Run one of the ledger's synchronous reads or actions off the event loop."""
        return await run_in_threadpool(call, *args)


STATIC = Path(__file__).parent / "static"
