"""The health page while verify runs: how far it has got (stage, events done of the
head, a progress bar), caught mid-way by holding verify at a report; and the ledger's
head hash, the newest seal's, the one `evq verify` prints."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

import evq
import evq.web
from evq.events import EventKind
from evq.ledger import Ledger

Progress = Callable[[str, int, int], None]


def client(web: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=web),
                             base_url="http://localhost")


def form_token(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)


def newest_seal_hash(ledger: Ledger) -> str:
    for event in ledger.read_events_back(ledger.last_position() + 1):
        if event.kind == EventKind.SEAL:
            return str(event.data["hash"])
    raise AssertionError("no seal")


class Held:
    """Wraps a ledger's verify so that it stops at its first report from mid-way through
    a stage (0 < done < total) until released: the page can be read meanwhile."""

    def __init__(self, ledger: Ledger) -> None:
        self.real = ledger.verify
        self.reached, self.release = threading.Event(), threading.Event()
        self.at: tuple[str, int, int] | None = None

    def verify(self, expect_head: str | None = None, archives: Sequence[Any] = (), *,
               progress: Progress | None = None) -> Any:
        def held(stage: str, done: int, total: int) -> None:
            assert progress is not None
            progress(stage, done, total)
            if self.at is None and 0 < done < total:
                self.at = (stage, done, total)
                self.reached.set()
                assert self.release.wait(60), "the test never released verify"

        try:
            return self.real(expect_head, archives,
                             progress=None if progress is None else held)
        finally:
            self.reached.set()  # never held (no progress heard): the test says so


async def test_health_shows_how_far_verify_has_got_and_the_head_hash(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with evq.Context(db, clock=evq.FakeClock()) as ctx:
        ctx.define("later", None)  # no handler: the jobs stay pending, nothing else writes
        await ctx.enqueue_many(("later", {"n": n}) for n in range(12_000))
        head = ctx.ledger.last_position()
        seal_hash = newest_seal_hash(ctx.ledger)
        web = evq.web.app(ctx)
        site = web.state.evq
        hold = Held(site.ledger)
        monkeypatch.setattr(site.ledger, "verify", hold.verify)
        try:
            async with client(web) as http:
                first = (await http.get("/health")).text
                assert f'<dt>head hash</dt><dd class="id">{seal_hash}</dd>' in first
                started = await http.post("/health/verify", data={"csrf": form_token(first)})
                assert started.status_code == 303
                run = site.verifying
                assert run is not None and run.task is not None
                assert await asyncio.to_thread(hold.reached.wait, 60)
                assert hold.at is not None, "verify reported nothing from mid-way"
                stage, done, total = hold.at
                assert total == head
                during = (await http.get("/health")).text
                shown = f"{stage}, {done:,} of {total:,} events ({100 * done // total}%)."
                assert shown in during and "s so far)" in during
                assert (f'<progress class="verify-progress" value="{done}" max="{total}">'
                        in during)
                assert '<meta http-equiv="refresh" content="2">' in during
                assert "Verify now" not in during  # one run at a time
                hold.release.set()
                await run.task
                after = (await http.get("/health")).text
        finally:
            hold.release.set()
    assert run.error is None and run.report is not None
    assert "<strong>ok</strong>" in after and "<progress" not in after
    assert run.progress == ("replay", head, head)  # the last report: replay, to the end
    # The head hash on the page is the newest seal's, as `evq verify` prints it.
    assert f'<dt>head hash</dt><dd class="id">{seal_hash}</dd>' in after
    assert run.report.lines[-1] == f"head: {seal_hash}"
