"""An action on every job the jobs list's filter matches. The confirmation page counts
them and remembers exactly which they are (on the server, under a one-time key); the
confirmed action takes those and no other (a job that comes to match later is left
alone, one that stopped matching is still acted on, and refused if it cannot be), each
in a transaction of its own through the same ledger operations as the single action.
What one refuses (a job that ended meanwhile) is counted and said, and does not stop the
rest. The key works once: posting the form again does nothing twice; the outcome is
shown on a page of its own (the post redirects there)."""

from __future__ import annotations

import secrets
import time
from typing import Any

import attrs
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ..errors import EvqError, InvalidInput
from .actions import ACTIONS, DEFAULT_REASON, WHAT, action_of, checked_form
from .pages import job_query, render, site_of, text_of

MOST = 10_000  # jobs one bulk action may take
KEPT_FOR = 600.0  # seconds a counted selection (or an outcome) is kept
_FILTERS = ("state", "queue", "name", "text", "since", "until")
_SHOWN_REFUSALS = 5


@attrs.define
class Selection:
    action: str
    filters: dict[str, str]
    ids: list[str]
    made: float
    outcome: tuple[int, list[str]] | None = None  # done, refusals (once acted)


def _kept(site: Any) -> dict[str, Selection]:
    selections: dict[str, Selection] = site.selections
    now = time.time()
    for key in [key for key, held in selections.items() if now - held.made > KEPT_FOR]:
        del selections[key]
    return selections


async def bulk(request: Request) -> Response:
    site = site_of(request)
    action = action_of(request)
    form = await checked_form(request)
    selections = _kept(site)
    key = text_of(form, "key")
    if key is None:  # count and remember them, then ask
        filters = {name: value for name in _FILTERS if (value := text_of(form, name))}
        query = attrs.evolve(job_query(QueryParams(filters)), limit=MOST)
        found = (await site.read(site.ledger.job_page, query)).jobs
        if action == "run_now":  # only those waiting for a later time: the rest are due
            found = [job for job in found if job.scheduled()]
        key = secrets.token_urlsafe(16)
        selections[key] = Selection(action, filters, [job.id for job in found], time.time())
        return render(request, "bulk.html", title=f"{WHAT[action]}: every job matching",
                      action=action, what=WHAT[action], filters=filters,
                      count=len(found), most=MOST, key=key)
    chosen = selections.get(key)
    if chosen is None or chosen.action != action:
        raise InvalidInput("this confirmation has expired or was for another action: "
                           "go back to the list and start again")
    if chosen.outcome is None:  # the first post acts; a second one only shows it
        chosen.outcome = (0, [])
        reason = text_of(form, "reason") or DEFAULT_REASON
        done, refused = 0, list[str]()
        for job_id in chosen.ids:
            try:
                await site.read(ACTIONS[action], site.ledger, job_id, reason)
                done += 1
            except EvqError as exc:
                refused.append(str(exc))
        chosen.outcome = (done, refused)
    return RedirectResponse(request.url_for("bulk_done", key=key).path, status_code=303)


async def done(request: Request) -> Response:
    site = site_of(request)
    chosen = _kept(site).get(request.path_params["key"])
    if chosen is None or chosen.outcome is None:
        raise InvalidInput("no such bulk action (they are kept for ten minutes)")
    acted, refused = chosen.outcome
    return render(request, "bulk_done.html", title=f"{WHAT[chosen.action]}: done",
                  what=WHAT[chosen.action], filters=chosen.filters, done=acted,
                  refused=len(refused), reasons=refused[:_SHOWN_REFUSALS])
