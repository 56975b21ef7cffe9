"""Live pages: `/live` is a server-sent event stream that says `change` (with the new
head position) whenever the ledger moves on, whoever wrote to it: another process, a
caller's own transaction, this dashboard. The pages' script (static/evq.js) listens while
its tab is visible, and then fetches the page again and swaps in its live part."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .pages import site_of

QUIET_BEATS = 15  # polls without a change before a comment line keeps proxies from closing


async def stream(request: Request) -> Response:
    site = site_of(request)

    async def changes() -> AsyncIterator[str]:
        seen = await site.read(site.ledger.last_position)
        yield f"event: head\ndata: {seen}\n\n"
        quiet = 0
        while not await request.is_disconnected():
            # Polling one indexed read per interval: it sees every writer, in every
            # process and on both engines, which no in-process signal can.
            await asyncio.sleep(site.live_interval)
            head = await site.read(site.ledger.last_position)
            if head != seen:
                seen, quiet = head, 0
                yield f"event: change\ndata: {head}\n\n"
            elif (quiet := quiet + 1) >= QUIET_BEATS:
                quiet = 0
                yield ": still here\n\n"

    return StreamingResponse(changes(), media_type="text/event-stream",
                             headers={"cache-control": "no-store"})
