"""An action on every job the jobs list's filter matches: the confirmation page says how
many first, and the action then takes at most that many (jobs that came to match since
are left alone), newest first, each job in a transaction of its own through the same
ledger operations as the single action; what one refuses (a job that ended meanwhile)
is counted and said, and does not stop the rest."""

from __future__ import annotations

import attrs
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from ..errors import EvqError
from .actions import ACTIONS, DEFAULT_REASON, WHAT, checked_form
from .pages import job_query, render, site_of, text_of, whole

MOST = 10_000  # jobs one bulk action may take
_FILTERS = ("state", "queue", "name", "text", "since", "until")
_SHOWN_REFUSALS = 5


async def bulk(request: Request) -> Response:
    site = site_of(request)
    action = request.path_params["action"]
    if action not in ACTIONS:
        return render(request, "error.html", 404, title="Not found",
                      message=f"there is no action {action!r}")
    form = await checked_form(request)
    filters = {name: value for name in _FILTERS if (value := text_of(form, name))}
    query = attrs.evolve(job_query(QueryParams(filters)), limit=MOST)
    if form.get("confirm") != "yes":
        # The jobs counted are those enqueued up to now (the head): the action takes
        # only those, whatever is enqueued before it is confirmed.
        head = await site.read(site.ledger.last_position)
        count = await site.read(site.ledger.count_jobs, attrs.evolve(query, before=head + 1))
        return render(request, "bulk.html", title=f"{WHAT[action]}: every job matching",
                      action=action, what=WHAT[action], filters=filters, count=count,
                      most=MOST, head=head)
    confirmed = whole(text_of(form, "count"), "count", 0, MOST) or 0
    head = whole(text_of(form, "head"), "head", 0) or 0
    reason = text_of(form, "reason") or DEFAULT_REASON
    done, refused = 0, list[str]()
    before: int | None = head + 1
    while done + len(refused) < confirmed:
        page = await site.read(site.ledger.job_page, attrs.evolve(
            query, before=before, limit=min(200, confirmed - done - len(refused))))
        if not page:
            break
        for record in page:
            try:
                await site.read(ACTIONS[action], site.ledger, record.id, reason)
                done += 1
            except EvqError as exc:
                refused.append(str(exc))
        before = page[-1].enqueue_position
    return render(request, "bulk_done.html", title=f"{WHAT[action]}: done", action=action,
                  what=WHAT[action], filters=filters, done=done, refused=len(refused),
                  reasons=refused[:_SHOWN_REFUSALS])
