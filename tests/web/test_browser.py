"""The dashboard in a real browser (headless Chromium, driven by Playwright): what an
operator does with the pages, end to end, against a real server on a real ledger.

A local run without Chromium (Debian's `chromium` package at /usr/bin/chromium, or
EVQ_TEST_CHROMIUM) or without Playwright skips these tests, saying why; CI installs
Chromium and sets EVQ_REQUIRE_CHROMIUM=1, which turns the skip into a failure."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from test_routes import ENQUEUE_ELSEWHERE, fill

import evq
import evq.web

CHROMIUM = os.environ.get("EVQ_TEST_CHROMIUM") or shutil.which("chromium") or ""
REQUIRED = os.environ.get("EVQ_REQUIRE_CHROMIUM") == "1"
WAIT_MS = 15_000


def _missing() -> str | None:
    if not CHROMIUM:
        return "browser tests skipped: no Chromium (apt-get install chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "browser tests skipped: Playwright is not installed (pip install '.[test]')"
    return None


@pytest.fixture
def chromium_path() -> str:
    missing = _missing()
    if missing is not None:
        if REQUIRED:
            pytest.fail(missing.replace("skipped", "required (EVQ_REQUIRE_CHROMIUM=1)"))
        pytest.skip(missing)
    return CHROMIUM


@pytest.fixture
async def served(db: Path) -> AsyncIterator[tuple[str, evq.Context, dict[str, Any]]]:
    """A dashboard on a filled ledger, served by uvicorn on a free loopback port."""
    async with evq.Context(db) as ctx:
        jobs = await fill(ctx)
        listening = socket.create_server(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(evq.web.app(db, live_interval=0.05),
                                               log_level="warning", lifespan="off"))
        serving = asyncio.create_task(server.serve(sockets=[listening]))
        try:
            yield f"http://127.0.0.1:{listening.getsockname()[1]}", ctx, jobs
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 10)


@pytest.fixture
async def page(chromium_path: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as driver:
        browser = await driver.chromium.launch(
            executable_path=chromium_path,
            args=["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking"])
        try:
            tab = await browser.new_page()
            tab.set_default_timeout(WAIT_MS)
            errors: list[str] = []
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            tab.on("console", lambda msg: errors.append(msg.text)
                   if msg.type == "error" else None)
            yield tab
            assert errors == [], errors  # no script error, no CSP violation
        finally:
            await browser.close()


async def test_the_overview_then_a_filtered_list_then_a_timeline(served: Any,
                                                                  page: Any) -> None:
    base, ctx, jobs = served
    await page.goto(base + "/")
    assert await page.title() == "Overview · evq"
    pending = page.locator('table.counts a[href="/jobs?queue=mail&state=pending"]')
    assert await pending.inner_text() == "4"
    await page.click("text=Jobs")
    await page.select_option('select[name="state"]', "expired")
    await page.click('button:has-text("Filter")')
    await page.wait_for_url("**/jobs?state=expired*")
    rows = page.locator("table.jobs tbody tr")
    assert await rows.count() == 1
    await rows.first.locator("a").click()
    await page.wait_for_url(f"**/jobs/{jobs['failed']}")
    kinds = await page.locator("table.timeline tbody tr td:nth-child(3)").all_inner_texts()
    assert kinds == [e.kind for e in await ctx.history(jobs["failed"])]
    await page.click("details summary")
    assert "ValueError" in await page.locator("details pre").inner_text()


async def test_a_hostile_payload_shows_as_text(served: Any, page: Any) -> None:
    base, _, jobs = served
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    await page.goto(f"{base}/jobs/{jobs['hostile']}")
    shown = await page.locator("pre.payload").inner_text()
    assert "<script>alert(1)</script>" in shown and "\\u001b[31mred" in shown
    assert dialogs == []


async def test_cancelling_a_job_adds_its_cancel_event(served: Any, page: Any) -> None:
    base, ctx, jobs = served
    target = jobs["pending"][0]
    await page.goto(f"{base}/jobs/{target}")
    await page.click('button:has-text("Cancel")')
    await page.wait_for_selector("text=Keep it as it is")
    await page.fill('input[name="reason"]', "customer left")
    await page.click('main form button[type="submit"]')
    await page.wait_for_url(f"**/jobs/{target}")
    await page.wait_for_selector("tr.kind-cancel")
    assert "reason=customer left" in await page.locator("tr.kind-cancel").inner_text()
    record = await ctx.get_job(target)
    assert record is not None and record.state == evq.JobState.CANCELLED


async def test_a_job_enqueued_by_another_process_appears_live(served: Any, page: Any,
                                                             db: Path) -> None:
    base, _, _ = served
    await page.goto(f"{base}/jobs?queue=mail&state=pending")
    rows = page.locator("table.jobs tbody tr")
    before = await rows.count()
    other = await asyncio.create_subprocess_exec(sys.executable, "-c", ENQUEUE_ELSEWHERE,
                                                 str(db))
    assert await asyncio.wait_for(other.wait(), 60) == 0
    # No reload: the page's script hears of the commit and swaps its list in.
    await page.wait_for_function(
        "n => document.querySelectorAll('table.jobs tbody tr').length === n", arg=before + 1)


async def test_travelling_back_in_time_shows_the_earlier_state(served: Any, page: Any) -> None:
    base, ctx, jobs = served
    target = jobs["pending"][2]
    enqueued = (await ctx.history(target))[0]
    await ctx.cancel(target, "too late")
    await page.goto(f"{base}/jobs/{target}")
    await page.wait_for_selector("tr.kind-cancel")
    await page.fill('input[name="at"]', enqueued.at.isoformat())
    await page.click('button:has-text("Travel")')
    banner = page.locator('[role="status"]')
    assert "As it stood at" in await banner.inner_text()
    assert await page.locator("tr.kind-cancel").count() == 0
    assert await page.locator("dd.state-pending").inner_text() == "pending"
    assert await page.locator(".actions").count() == 0  # no acting on the past
    await page.click("text=Back to now")
    await page.wait_for_selector("tr.kind-cancel")
