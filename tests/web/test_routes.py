"""The dashboard's pages and actions through an ASGI client, against real ledgers: what
an operator sees and does, and what a stranger or another site cannot do."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from pg_server import drop_handed_out, new_place
from starlette.applications import Starlette
from starlette.routing import Mount

import evq
import evq.web
from evq.web import travel
from evq.web.guard import Auth, csrf_token

HOSTILE = {"to": "<script>alert(1)</script>", "colour": "\x1b[31mred", "flip": "a\u202eb"}


def client(web: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=web),
                             base_url="http://localhost")


async def fill(ctx: evq.Context) -> dict[str, Any]:
    """Jobs in several queues and states: two done, one out of attempts (expired),
    three pending, one with a hostile payload."""
    async def ok(payload: Any) -> Any:
        return {"ok": payload}

    async def broken(payload: Any) -> Any:
        raise ValueError("no such city <b>")

    ctx.define("mail", ok, queue="mail")
    ctx.define("geo", broken, queue="geo", max_attempts=1)
    ctx.define("later", None, queue="mail")
    done = [await ctx.enqueue("mail", {"n": n}) for n in range(2)]
    failed = await ctx.enqueue("geo", {"city": "Atlantis"})
    await ctx.drain()
    pending = [await ctx.enqueue("later", {"n": n}) for n in range(3)]
    hostile = await ctx.enqueue("later", HOSTILE)
    return {"done": done, "failed": failed, "pending": pending, "hostile": hostile}


@pytest.fixture
async def filled(db: Path) -> AsyncIterator[tuple[evq.Context, dict[str, Any]]]:
    async with evq.Context(db) as ctx:
        yield ctx, await fill(ctx)


def ids_in(page: str) -> list[str]:
    return re.findall(r'href="/jobs/([0-9a-f]{32})(?:\?[^"]*)?"', page)


async def test_the_overview_counts_jobs_by_queue_and_state(filled: Any) -> None:
    ctx, _ = filled
    async with client(evq.web.app(ctx)) as http:
        page = await http.get("/")
    assert page.status_code == 200
    text = page.text
    # mail: 2 succeeded, 4 pending; geo: 1 expired; each count links to its list
    assert 'href="/jobs?queue=mail&amp;state=succeeded">2</a>' in text
    assert 'href="/jobs?queue=mail&amp;state=pending">4</a>' in text
    assert 'href="/jobs?queue=geo&amp;state=expired">1</a>' in text
    assert "100.0%" in text  # geo's error rate over the last minutes
    # The chart of the last hour: a bar per minute, stacked by final state, with its
    # figures as a tooltip; the backlog: mail's four pending jobs are due.
    chart = text.split('<svg class="chart"', 1)[1].split("</svg>", 1)[0]
    assert 'aria-label="Jobs finished per minute: 3 in all, 1 failed"' in page.text
    assert chart.count('class="bar-succeeded"') >= 1 and 'class="bar-expired"' in chart
    tips = re.findall(r"<title>([^<]*)</title>", chart)
    assert len(tips) == 60
    assert sum(int(n) for tip in tips for n in re.findall(r"(\d+) succeeded", tip)) == 2
    assert "3 finished, 1 failed" in text
    backlog = text.split("Backlog", 1)[1].split("</table>", 1)[0]
    assert re.search(r'state=pending">mail</a></th><td>4</td><td>\d+s</td>', backlog)


async def test_a_search_beyond_the_state_looks_at_a_bounded_stretch_and_goes_on(
        filled: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # A filter no index serves looks at SCANNED jobs per page (10,000; 2 here), says so
    # when it found too few, and links to the next stretch, keeping the filter.
    ctx, jobs = filled
    monkeypatch.setattr(evq.web.pages, "SCANNED", 2)
    async with client(evq.web.app(ctx)) as http:
        page = await http.get("/jobs", params={"queue": "geo"})
        found: list[str] = []
        stretches = 0
        while True:
            found += ids_in(page.text)
            stretches += 1
            link = re.search(r'href="([^"]+)" rel="next">Search older jobs', page.text)
            if link is None:
                break
            assert "among the 2 jobs looked at" in page.text
            assert "queue=geo" in link.group(1)
            page = await http.get(link.group(1).replace("&amp;", "&"))
        assert found == [jobs["failed"]]
        assert stretches == 4  # 7 jobs, 2 at a time
        # The state alone is served by an index: no bound, every match at once.
        assert ids_in((await http.get("/jobs", params={"state": "expired"})).text) == [
            jobs["failed"]]


async def test_the_jobs_list_filters_pages_and_keeps_its_filter(filled: Any) -> None:
    ctx, jobs = filled
    async with client(evq.web.app(ctx)) as http:
        newest_first = [jobs["hostile"], *jobs["pending"][::-1]]
        first = await http.get("/jobs", params={"queue": "mail", "state": "pending",
                                                "limit": "3"})
        assert ids_in(first.text) == newest_first[:3]
        older = re.search(r'href="([^"]+)" rel="next"', first.text)
        assert older is not None
        link = older.group(1).replace("&amp;", "&")
        assert "queue=mail" in link and "state=pending" in link and "before=" in link
        second = await http.get(link)
        assert ids_in(second.text) == newest_first[3:]
        assert 'rel="next"' not in second.text
        assert ids_in((await http.get("/jobs", params={"text": "Atlantis"})).text) == [
            jobs["failed"]]
        assert ids_in((await http.get("/jobs", params={"name": "geo"})).text) == [
            jobs["failed"]]
        assert ids_in((await http.get("/jobs", params={"since": "1h"})).text) != []
        assert ids_in((await http.get("/jobs", params={"until": "1h"})).text) == []
        bad = await http.get("/jobs", params={"state": "sleeping"})
        assert bad.status_code == 400
        assert "state must be one of" in bad.text and "Traceback" not in bad.text
        assert (await http.get("/jobs", params={"since": "yesterday"})).status_code == 400


async def test_a_job_page_shows_payload_timeline_and_errors_escaped(filled: Any) -> None:
    ctx, jobs = filled
    async with client(evq.web.app(ctx)) as http:
        hostile = (await http.get(f"/jobs/{jobs['hostile']}")).text
        failed = (await http.get(f"/jobs/{jobs['failed'][-8:]}")).text  # by its short id
        missing = await http.get("/jobs/nosuchjob")
    assert "<script>alert" not in hostile and "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile
    assert "\x1b" not in hostile and "\\u001b[31mred" in hostile
    assert "\u202e" not in hostile and "a\\u202eb" in hostile
    assert "Atlantis" in failed and "no such city &lt;b&gt;" in failed
    kinds = re.findall(r'<tr class="kind-(\w+)">', failed)
    assert kinds == [e.kind for e in await ctx.history(jobs["failed"])]
    assert "traceback" in failed and "ValueError" in failed
    assert missing.status_code == 404 and "no such job" in missing.text


def form_token(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)


async def test_cancel_is_confirmed_and_refused_without_the_forms_token(filled: Any) -> None:
    ctx, jobs = filled
    target = jobs["pending"][0]
    before = await ctx.history(target)
    async with client(evq.web.app(ctx)) as http:
        page = (await http.get(f"/jobs/{target}")).text
        token = form_token(page)
        forged = await http.post("/actions/cancel", data={"job_id": target, "confirm": "yes"})
        elsewhere = await http.post("/actions/cancel",
                                    data={"job_id": target, "csrf": token, "confirm": "yes"},
                                    headers={"origin": "http://evil.example"})
        assert forged.status_code == elsewhere.status_code == 403
        asked = await http.post("/actions/cancel", data={"job_id": target, "csrf": token})
        assert asked.status_code == 200 and 'name="confirm" value="yes"' in asked.text
        assert await ctx.history(target) == before  # nothing written yet
        done = await http.post("/actions/cancel", data={
            "job_id": target, "csrf": token, "confirm": "yes", "reason": "customer left"})
        assert done.status_code == 303 and done.headers["location"].endswith(target)
        shown = (await http.get(done.headers["location"])).text
    events = await ctx.history(target)
    assert [e.kind for e in events] == [*(e.kind for e in before), "cancel"]
    assert events[-1].data["reason"] == "customer left"
    assert 'class="kind-cancel"' in shown
    record = await ctx.get_job(target)
    assert record is not None and record.state == evq.JobState.CANCELLED


async def test_run_now_makes_a_delayed_job_due_from_its_page(filled: Any) -> None:
    # "Run now" shows on a job that waits for a later time, is confirmed, and writes a
    # run_now event; the job is then due (no button any more).
    ctx, jobs = filled
    delayed = await ctx.enqueue("later", {"n": "tomorrow"}, delay=86400)
    async with client(evq.web.app(ctx)) as http:
        page = (await http.get(f"/jobs/{delayed}")).text
        assert 'value="run_now"' in page
        assert 'value="run_now"' not in (await http.get(f"/jobs/{jobs['pending'][0]}")).text
        token = form_token(page)
        asked = await http.post("/actions/run_now", data={"job_id": delayed, "csrf": token})
        assert asked.status_code == 200 and "Run now (a delayed job)" in asked.text
        done = await http.post("/actions/run_now", data={
            "job_id": delayed, "csrf": token, "confirm": "yes", "reason": "needed today"})
        assert done.status_code == 303
        shown = (await http.get(done.headers["location"])).text
        assert 'class="kind-run_now"' in shown and 'value="run_now"' not in shown
        refused = await http.post("/actions/run_now", data={
            "job_id": jobs["failed"], "csrf": token, "confirm": "yes"})
        assert refused.status_code == 409 and "only a pending job" in refused.text
    event = (await ctx.history(delayed))[-1]
    assert (event.kind, event.data["reason"]) == ("run_now", "needed today")
    record = await ctx.get_job(delayed)
    assert record is not None and not record.scheduled()


async def test_retry_makes_a_new_job_and_a_refused_action_says_why(filled: Any) -> None:
    ctx, jobs = filled
    async with client(evq.web.app(ctx)) as http:
        token = form_token((await http.get(f"/jobs/{jobs['failed']}")).text)
        retried = await http.post("/actions/retry", data={
            "job_id": jobs["failed"], "csrf": token, "confirm": "yes"})
        assert retried.status_code == 303
        new_id = retried.headers["location"].rsplit("/", 1)[1]
        assert new_id != jobs["failed"]
        again = await http.post("/actions/cancel", data={
            "job_id": jobs["done"][0], "csrf": token, "confirm": "yes"})
    record = await ctx.get_job(new_id)
    assert record is not None and record.state == evq.JobState.PENDING
    assert again.status_code == 409 and "Traceback" not in again.text
    assert 'role="alert"' in again.text
    done = await ctx.get_job(jobs["done"][0])
    assert done is not None and done.state == evq.JobState.SUCCEEDED


async def test_a_read_only_dashboard_shows_no_action_and_takes_none(filled: Any) -> None:
    ctx, jobs = filled
    target = jobs["pending"][0]
    read_only = evq.web.app(ctx, read_only=True)
    # A post with everything right but the dashboard being read-only.
    token = csrf_token(read_only.state.evq.secret)
    async with client(read_only) as http:
        page = (await http.get(f"/jobs/{target}")).text
        refused = await http.post("/actions/delete", data={
            "job_id": target, "csrf": token, "confirm": "yes"})
    assert "<form method=\"post\"" not in page and "read-only" in page
    assert refused.status_code == 403
    record = await ctx.get_job(target)
    assert record is not None and record.state == evq.JobState.PENDING


async def test_credentials_are_required_once_set_except_for_healthz(filled: Any) -> None:
    ctx, _ = filled
    web = evq.web.app(ctx, auth=Auth(token="t0k", password="pw"))
    basic = "Basic " + base64.b64encode(b"evq:pw").decode()
    wrong = "Basic " + base64.b64encode(b"evq:nope").decode()
    async with client(web) as http:
        anonymous = await http.get("/")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Basic")
        assert (await http.get("/", headers={"authorization": wrong})).status_code == 401
        assert (await http.get("/", headers={"authorization": basic})).status_code == 200
        assert (await http.get("/metrics", headers={"authorization": "Bearer t0k"})
                ).status_code == 200
        assert (await http.get("/metrics", headers={"authorization": "Bearer no"})
                ).status_code == 401
        health = await http.get("/healthz")
    assert health.status_code == 200 and health.text == "ok\n"
    assert "default-src 'self'" in anonymous.headers["content-security-policy"]


async def test_metrics_count_jobs_by_queue_and_state(filled: Any) -> None:
    ctx, _ = filled
    async with client(evq.web.app(ctx)) as http:
        scraped = await http.get("/metrics")
    assert scraped.headers["content-type"].startswith("text/plain")
    assert 'evq_jobs{queue="mail",state="pending"} 4.0' in scraped.text
    assert 'evq_jobs{queue="geo",state="expired"} 1.0' in scraped.text
    assert re.search(r"^evq_ledger_bytes \d", scraped.text, re.M)
    assert re.search(r"^evq_ledger_wal_bytes \d", scraped.text, re.M)
    head = re.search(r"^evq_ledger_head_position (\S+)$", scraped.text, re.M)
    assert head is not None and float(head.group(1)) == (await ctx.events(limit=10_000,
                                                                         seals=True))[-1].position


async def test_it_mounts_inside_another_application(filled: Any) -> None:
    ctx, jobs = filled
    outer = Starlette(routes=[Mount("/ops/queue", app=evq.web.app(ctx))])
    async with client(outer) as http:
        listed = await http.get("/ops/queue/jobs", params={"state": "expired"})
        page = await http.get(f"/ops/queue/jobs/{jobs['failed']}")
    assert listed.status_code == 200
    assert f'href="/ops/queue/jobs/{jobs["failed"]}"' in listed.text
    assert page.status_code == 200 and 'href="/ops/queue/static/evq.css"' in page.text


async def test_a_ledger_that_is_not_there_is_a_page_not_a_traceback(tmp_path: Path) -> None:
    async with client(evq.web.app(tmp_path / "missing.db")) as http:
        page = await http.get("/")
        health = await http.get("/healthz")
    assert page.status_code == 503 and 'role="alert"' in page.text
    assert "Traceback" not in page.text and health.status_code == 503
    assert not (tmp_path / "missing.db").exists()


async def test_a_ledger_of_an_older_schema_says_to_migrate_it(db: Path) -> None:
    # A ledger an older evq made (version 4, before the jobs-by-state index): the
    # dashboard reads nothing until it is upgraded, and says how; then it serves.
    async with evq.Context(db) as ctx:
        await ctx.enqueue(ctx.define("mail", None), {"to": "ada"})
    with sqlite3.connect(db) as conn:
        conn.execute("DROP INDEX evq_jobs_by_state")
        conn.execute("UPDATE evq_meta SET value = '4' WHERE key = 'schema_version'")
    async with client(evq.web.app(db)) as http:
        page = await http.get("/jobs")
        assert page.status_code == 503 and "Traceback" not in page.text
        assert "run `evq migrate --db" in page.text
        assert evq.migrate(db) == (4, 5)
        assert (await http.get("/jobs")).status_code == 200


def evq_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evq", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def test_evq_web_will_not_listen_beyond_loopback_without_credentials(db: Path) -> None:
    done = evq_cli("web", "--db", str(db), "--host", "0.0.0.0")
    assert done.returncode == 2
    assert "EVQ_WEB_PASSWORD" in done.stderr and "Traceback" not in done.stderr
    missing = evq_cli("web", "--db", str(db.parent / "nothing.db"))
    assert missing.returncode != 0 and missing.stderr.startswith("evq: ")
    assert "Traceback" not in missing.stderr


async def test_the_same_pages_and_actions_on_postgresql(postgres_url: str) -> None:
    place = new_place()
    try:
        async with evq.Context(place) as ctx:
            jobs = await fill(ctx)
            # By URL, as `evq web --db postgresql://...` serves it.
            async with client(evq.web.app(place)) as http:
                overview = (await http.get("/")).text
                listed = await http.get("/jobs", params={"queue": "mail", "state": "pending"})
                page = (await http.get(f"/jobs/{jobs['hostile']}")).text
                done = await http.post("/actions/cancel", data={
                    "job_id": jobs["hostile"], "csrf": form_token(page), "confirm": "yes"})
                metrics = (await http.get("/metrics")).text
            record = await ctx.get_job(jobs["hostile"])
    finally:
        drop_handed_out()
    assert 'href="/jobs?queue=mail&amp;state=pending">4</a>' in overview
    assert ids_in(listed.text) == [jobs["hostile"], *jobs["pending"][::-1]]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "\x1b" not in page
    assert done.status_code == 303
    assert record is not None and record.state == evq.JobState.CANCELLED
    assert 'evq_jobs{queue="mail",state="pending"} 3.0' in metrics


ENQUEUE_ELSEWHERE = """
import asyncio, sys
import evq

async def main():
    async with evq.Context(sys.argv[1]) as ctx:
        ctx.define("later", None, queue="mail")
        await ctx.enqueue("later", {"from": "another process"})

asyncio.run(main())
"""


async def next_event(lines: Any) -> tuple[str, str]:
    """The next server-sent event's name and data (comment lines skipped)."""
    name = data = ""
    async for line in lines:
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            data = line[len("data: "):]
        elif line == "" and name:
            return name, data
    raise AssertionError("the stream ended")


async def test_live_pages_hear_of_a_commit_made_by_another_process(filled: Any,
                                                                   db: Path) -> None:
    import socket

    import uvicorn

    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(evq.web.app(db, live_interval=0.02),
                                           log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            page = (await http.get("/jobs")).text
            assert 'data-live="/live"' in page and 'id="live"' in page
            async with http.stream("GET", "/live") as answer:
                assert answer.headers["content-type"].startswith("text/event-stream")
                lines = answer.aiter_lines()
                kind, head = await asyncio.wait_for(next_event(lines), 10)
                assert kind == "head"
                other = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", ENQUEUE_ELSEWHERE, str(db))
                assert await asyncio.wait_for(other.wait(), 60) == 0
                kind, moved = await asyncio.wait_for(next_event(lines), 10)
        assert kind == "change" and int(moved) > int(head)
        newest = (await filled[0].events(after=int(head), limit=10))
        assert newest and newest[0].data["payload"] == {"from": "another process"}
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


async def test_queues_show_depth_and_schedules_and_subscribers_their_lag(db: Path) -> None:
    async with evq.Context(db) as ctx:
        ctx.queue("mail", concurrency=2)
        ctx.define("digest", None, queue="mail", repeat=3600, max_attempts=7)
        ctx.define("send", None, queue="mail")
        await ctx.deploy()
        await ctx.orchestrator().tick()  # fires the schedule once, records the next fire
        await ctx.enqueue("send", {"to": "ada"})
        seen: list[int] = []

        async def copy(event: evq.Event) -> None:
            seen.append(event.position)

        stop = ctx.add_event_handler(copy, durable="audit-copy", start="beginning")
        await ctx.flush_events()
        async with client(evq.web.app(ctx)) as http:
            queues = (await http.get("/queues")).text
            subscribers = (await http.get("/subscribers")).text
        stop()
    assert 'href="/jobs?queue=mail&amp;state=pending">2 pending</a>' in queues
    assert "Concurrency limit: 2 running at once across every process." in queues
    digest = queues.split(">digest</a>")[1].split("</tr>")[0]
    assert "<td>7</td>" in digest and "3600" in digest  # its settings and schedule
    times = re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z", digest)
    assert len(times) == 2 and times[0] < times[1]  # the last fire (a link), the next
    assert 'href="/jobs?name=digest&amp;queue=mail">' in digest
    assert "audit-copy" in subscribers
    row = subscribers.split("audit-copy")[1].split("</tr>")[0]
    positions = re.findall(r"<td[^>]*>(\d+)</td>", row)
    assert positions[0] == positions[1] and positions[2] == "0"  # caught up: no lag


async def test_delete_from_the_page_removes_the_job_and_keeps_its_events(filled: Any) -> None:
    ctx, jobs = filled
    target = jobs["pending"][1]
    async with client(evq.web.app(ctx)) as http:
        token = form_token((await http.get(f"/jobs/{target}")).text)
        done = await http.post("/actions/delete", data={
            "job_id": target, "csrf": token, "confirm": "yes", "reason": "spam"})
        after = (await http.get(done.headers["location"])).text
    assert done.status_code == 303
    assert await ctx.get_job(target) is None
    assert [e.kind for e in await ctx.history(target)][-1] == "delete"
    assert "no longer in the current state" in after and 'class="kind-delete"' in after


async def test_an_open_dashboard_answers_only_requests_addressed_to_loopback(
        filled: Any) -> None:
    # A page elsewhere that points its own name at 127.0.0.1 (DNS rebinding) reaches
    # the dashboard's port, but with its own name in Host: refused, and nothing acted.
    ctx, jobs = filled
    target = jobs["pending"][0]
    web = evq.web.app(ctx)
    token = csrf_token(web.state.evq.secret)
    async with client(web) as http:
        for host in ("evil.example:8470", "evil.example", "10.0.0.8:8470",
                     "127.attacker.example", "127.0.0.1.nip.io:8470"):
            read = await http.get("/jobs", headers={"host": host})
            acted = await http.post("/actions/delete", headers={
                "host": host, "origin": f"http://{host}"},
                data={"job_id": target, "csrf": token, "confirm": "yes"})
            assert read.status_code == acted.status_code == 421, host
        for host in ("127.0.0.1:8470", "localhost", "[::1]:8470", "127.0.0.2"):
            assert (await http.get("/", headers={"host": host})).status_code == 200, host
    assert await ctx.get_job(target) is not None
    allowed = evq.web.app(ctx, allow_hosts=["ops.example.com"])
    async with client(allowed) as http:
        assert (await http.get("/", headers={"host": "ops.example.com"})).status_code == 200
        assert (await http.get("/", headers={"host": "evil.example"})).status_code == 421
    guarded = evq.web.app(ctx, auth=Auth(token="t0k"))
    async with client(guarded) as http:  # with credentials, any name (behind a proxy)
        answer = await http.get("/", headers={"host": "ops.example.com",
                                              "authorization": "Bearer t0k"})
        assert answer.status_code == 200


async def test_mounted_with_credentials_every_page_needs_them(filled: Any) -> None:
    ctx, jobs = filled
    outer = Starlette(routes=[Mount("/ops", app=evq.web.app(ctx, auth=Auth(token="t0k")))])
    async with client(outer) as http:
        for path in ("/ops/", "/ops/jobs", f"/ops/jobs/{jobs['failed']}", "/ops/metrics",
                     "/ops/live", "/ops//jobs"):
            assert (await http.get(path)).status_code == 401, path
        assert (await http.get("/ops/healthz")).status_code == 200
        assert (await http.get("/ops/jobs", headers={"authorization": "Bearer t0k"})
                ).status_code == 200


async def test_any_job_id_gets_a_working_link_and_bad_input_a_400(db: Path) -> None:
    from evq.ledger import records

    odd = ["a/b", "c?d=1#e", "100%", "x y"]
    async with evq.Context(db) as ctx:
        ctx.define("n", None)
        await ctx.ledger.enqueue([records.NewJob(job_id, "q", "n", {"id": job_id},
                                                 0.0, 0, 3) for job_id in odd])
        async with client(evq.web.app(ctx)) as http:
            listed = await http.get("/jobs")
            assert listed.status_code == 200
            links = re.findall(r'<a href="(/jobs?[^"]*)" title="([^"]*)"', listed.text)
            assert {title for _, title in links} == set(odd)
            for path, title in links:
                page = await http.get(path.replace("&amp;", "&"))
                assert page.status_code == 200, path
                assert f'<p class="id">{title}</p>' in page.text
            for params in ({"before": "²"}, {"limit": "²"}, {"before": "9" * 30},
                           {"queue": "a\x00b"}, {"text": "x\x1by"}, {"limit": "0"},
                           {"at": "yesterday"}, {"at": "1h", "upto": "3"}):
                bad = await http.get("/jobs", params=params)
                assert bad.status_code == 400, params
                assert 'role="alert"' in bad.text and "Traceback" not in bad.text
            assert (await http.get("/job", params={"id": "a\x00b"})).status_code == 404
            for path in ("/actions/explode", "/bulk/explode", "/queues/explode"):
                unknown = await http.post(path, data={})
                assert unknown.status_code == 404 and 'role="alert"' in unknown.text, path


async def test_a_moment_still_being_built_shows_how_far_it_has_got(
        filled: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # The first page at a moment on a big ledger would wait seconds for its build: it
    # answers at once with the build's progress and reloads itself until it is ready.
    ctx, jobs = filled
    monkeypatch.setattr(travel, "WAIT", 0.0)
    reported, release = threading.Event(), threading.Event()
    real = travel._build

    def slow(source: Any, position: int, folder: str, progress: Any) -> Any:
        progress(40, 100)
        reported.set()
        release.wait(30)
        return real(source, position, folder, progress)

    monkeypatch.setattr(travel, "_build", slow)
    head = (await ctx.events(limit=10_000, seals=True))[-1].position
    async with client(evq.web.app(ctx)) as http:
        await http.get("/", params={"upto": str(head)})  # starts the build
        await asyncio.to_thread(reported.wait, 30)
        building = await http.get(f"/jobs/{jobs['failed']}", params={"upto": str(head)})
        assert building.status_code == 202
        assert '<meta http-equiv="refresh" content="1">' in building.text
        assert "40 of 100 replayed (40%)" in building.text
        assert '<progress value="40" max="100">' in building.text
        assert f"(position {head})" in building.text  # the banner says where
        release.set()
        monkeypatch.setattr(travel, "WAIT", 60.0)
        ready = await http.get(f"/jobs/{jobs['failed']}", params={"upto": str(head)})
    assert ready.status_code == 200 and "state-expired" in ready.text


async def test_builds_of_the_past_are_bounded_and_their_failures_shown(
        filled: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # At most BUILDING_AT_ONCE moments are built at a time (each is a thread and a copy
    # of the ledger): another moment waits its turn with a 503 that says so. A build that
    # fails for a reason of its own (a full disk) is an error page, not a bare 500.
    ctx, _ = filled
    monkeypatch.setattr(travel, "WAIT", 0.0)
    monkeypatch.setattr(travel, "BUILDING_AT_ONCE", 1)
    started, release = threading.Event(), threading.Event()
    real = travel._build

    def slow(source: Any, position: int, folder: str, progress: Any) -> Any:
        started.set()
        release.wait(30)
        if position == seals[0]:
            raise OSError(28, "No space left on device")
        return real(source, position, folder, progress)

    monkeypatch.setattr(travel, "_build", slow)
    seals = [e.position for e in await ctx.events(limit=10_000, seals=True)
             if e.kind == "seal"]
    async with client(evq.web.app(ctx)) as http:
        assert (await http.get("/", params={"upto": str(seals[-1])})).status_code == 202
        await asyncio.to_thread(started.wait, 30)
        other = await http.get("/", params={"upto": str(seals[0])})
        assert other.status_code == 503 and "being built already" in other.text
        release.set()
        monkeypatch.setattr(travel, "WAIT", 60.0)
        assert (await http.get("/", params={"upto": str(seals[-1])})).status_code == 200
        failed = await http.get("/", params={"upto": str(seals[0])})
    assert failed.status_code == 500 and "No space left on device" in failed.text
    assert "failed: OSError" in failed.text and "content-security-policy" in failed.headers


async def test_travelling_back_shows_the_ledger_as_it_stood_then(filled: Any) -> None:
    ctx, jobs = filled
    target = jobs["pending"][0]
    before_cancel = (await ctx.events(limit=10_000, seals=True))[-1].position
    await ctx.cancel(target, "changed my mind")
    later = await ctx.enqueue("later", {"n": "later"})
    async with client(evq.web.app(ctx)) as http:
        now = (await http.get(f"/jobs/{target}")).text
        then = await http.get(f"/jobs/{target}", params={"upto": str(before_cancel)})
        listed = await http.get("/jobs", params={"upto": str(before_cancel),
                                                 "queue": "mail", "state": "pending"})
        overview = (await http.get("/", params={"upto": str(before_cancel)})).text
        too_early = await http.get("/", params={"at": "2000-01-01T00:00:00Z"})
        # A position inside a commit: the ledger as it stood after the commit before.
        inside = await http.get(f"/jobs/{target}", params={"upto": str(before_cancel - 1)})
    assert 'class="kind-cancel"' in now
    assert then.status_code == 200
    assert 'class="kind-cancel"' not in then.text and "state-pending" in then.text
    assert f"(position {before_cancel})" in then.text and 'role="status"' in then.text
    assert "<form method=\"post\"" not in then.text  # the past is never acted on
    assert "data-live" not in then.text
    # Links keep the moment; the list as it stood: the cancelled job still pending, the
    # later one not there yet.
    assert ids_in(listed.text) == [jobs["hostile"], *jobs["pending"][::-1]]
    assert later not in listed.text and f"upto={before_cancel}" in listed.text
    assert 'href="/jobs?queue=mail&amp;state=pending&amp;upto=' in overview
    assert too_early.status_code == 400 and "no event yet" in too_early.text
    seals = [e.position for e in await ctx.events(limit=10_000, seals=True)
             if e.kind == "seal" and e.position < before_cancel]
    assert inside.status_code == 200 and f"(position {seals[-1]})" in inside.text


async def test_a_job_in_a_flow_shows_its_tree_with_each_nodes_state(db: Path) -> None:
    async with evq.Context(db) as ctx:
        for name in ("report", "fetch", "parse"):
            ctx.define(name, None)
        root = await ctx.enqueue_flow(evq.FlowJob("report", {}, children=[
            evq.FlowJob("fetch", {"url": "<x>"}, children=[evq.FlowJob("parse", {})]),
            evq.FlowJob("parse", {}, ignore_dependency_on_failure=True)]))
        fetch = root.children[0]
        await ctx.cancel(fetch.children[0].id, "not needed")
        async with client(evq.web.app(ctx)) as http:
            page = (await http.get(f"/jobs/{fetch.id}")).text
            alone = (await http.get(f"/jobs/{(await ctx.enqueue('parse', {}))}")).text
    tree = page.split('<ul class="flow">')[1].split("<h2>")[0]
    ids = re.findall(r'href="/jobs/([0-9a-f]{32})"', tree)
    assert ids == [root.id, fetch.id, fetch.children[0].id, root.children[1].id]
    states = re.findall(r'<span class="state-(\w+)">', tree)
    assert states == ["waiting", "waiting", "cancelled", "pending"]
    assert "(ignore on failure)" in tree and 'aria-current="true"' in tree
    assert '<ul class="flow">' not in alone


async def test_workers_show_where_they_run_and_the_leases_they_hold(db: Path) -> None:
    async with evq.Context(db) as ctx:
        started = asyncio.Event()
        release = asyncio.Event()

        async def slow(payload: Any) -> None:
            started.set()
            await release.wait()

        ctx.define("slow", slow, queue="work", lease=30)
        job_id = await ctx.enqueue("slow", {})
        await ctx.pause("mail", "maintenance")
        worker = ctx.worker(name="box:work")
        serving = asyncio.create_task(worker.run())
        await started.wait()
        async with client(evq.web.app(ctx)) as http:
            page = (await http.get("/workers")).text
            queues = (await http.get("/queues")).text
        release.set()
        worker.stop()
        await serving
    row = page.split("box:work</td>")[1].split("</tr>")[0]
    assert f":{os.getpid()}</td>" in row and "slow" in row and row.endswith("<td>1</td>")
    lease = page.split('<table class="leases">')[1]
    assert f'href="/jobs/{job_id}"' in lease and "box:work" in lease
    assert 'mail</a> <span class="badge">paused</span>' in queues


async def test_health_shows_size_and_runs_verify_in_the_background(filled: Any,
                                                                    db: Path) -> None:
    ctx, _ = filled
    web = evq.web.app(ctx)
    size = ctx.ledger.storage_size()
    head = ctx.ledger.last_position()
    async with client(web) as http:
        first = (await http.get("/health")).text
        assert "Not run from this dashboard yet" in first
        assert f"<dd>{size.total_bytes:,} bytes</dd>" in first
        assert f"<dd>{size.wal_bytes:,} bytes (not yet checkpointed" in first
        assert f"<dd>{head}</dd>" in first
        forged = await http.post("/health/verify", data={})
        assert forged.status_code == 403 and web.state.evq.verifying is None
        started = await http.post("/health/verify", data={"csrf": form_token(first)})
        assert started.status_code == 303 and started.headers["location"] == "/health"
        run = web.state.evq.verifying
        assert run is not None and run.task is not None
        await run.task  # the background verify, to its end
        done = (await http.get("/health")).text
    assert "<strong>ok</strong>" in done and "the hash chain holds" in done
    report = verify_ledger_now(db)
    assert report.lines[-1] in done  # the same head hash as `evq verify` gives


def verify_ledger_now(db: Path) -> Any:
    from evq import verify
    from evq.ledger import open_ledger

    return verify.verify_ledger(open_ledger(db))


async def test_a_queue_is_paused_and_resumed_from_its_page(filled: Any) -> None:
    ctx, _ = filled
    async with client(evq.web.app(ctx)) as http:
        page = (await http.get("/queues")).text
        token = form_token(page)
        forged = await http.post("/queues/pause", data={"queue": "mail"})
        paused = await http.post("/queues/pause", data={"queue": "mail", "csrf": token})
        shown = (await http.get("/queues")).text
        state_then = ctx.ledger.paused_queues()
        resumed = await http.post("/queues/resume", data={"queue": "mail", "csrf": token})
        bad = await http.post("/queues/pause", data={"queue": "bad name!", "csrf": token})
    assert forged.status_code == 403
    assert paused.status_code == resumed.status_code == 303
    assert state_then == ["mail"] and ctx.ledger.paused_queues() == []
    assert 'mail</a> <span class="badge">paused</span>' in shown and ">Resume</button>" in shown
    kinds = [e.kind for e in await ctx.events(limit=10_000) if e.queue == "mail"]
    assert kinds[-2:] == ["pause", "resume"]
    assert bad.status_code == 400 and "queue" in bad.text


async def test_run_now_on_a_filter_takes_only_the_jobs_waiting_for_their_time(
        filled: Any) -> None:
    ctx, jobs = filled
    delayed = [await ctx.enqueue("later", {"n": n}, delay=3600) for n in range(2)]
    async with client(evq.web.app(ctx)) as http:
        token = form_token((await http.get("/jobs", params={"state": "pending"})).text)
        asked = await http.post("/bulk/run_now", data={"csrf": token, "state": "pending"})
        assert asked.status_code == 200 and "<strong>2</strong> jobs" in asked.text
        key = re.search(r'name="key" value="([^"]+)"', asked.text)
        assert key is not None
        done = await http.post("/bulk/run_now", data={
            "csrf": token, "confirm": "yes", "key": key.group(1)})
        shown = (await http.get(done.headers["location"])).text
    assert "2 jobs done" in shown
    run_now = [e.job_id for e in await ctx.events(limit=10_000) if e.kind == "run_now"]
    assert sorted(run_now) == sorted(delayed)  # the due ones got no event
    assert not any(r.scheduled() for r in await ctx.jobs())
    assert jobs["pending"][0] not in run_now


async def test_cancel_every_job_of_a_filter_after_seeing_how_many(filled: Any) -> None:
    ctx, jobs = filled
    async with client(evq.web.app(ctx)) as http:
        page = (await http.get("/jobs", params={"queue": "mail", "state": "pending"})).text
        token = form_token(page)
        filters = {"queue": "mail", "state": "pending"}
        asked = await http.post("/bulk/cancel", data={"csrf": token, **filters})
        assert asked.status_code == 200 and "<strong>4</strong> jobs" in asked.text
        key = re.search(r'name="key" value="([^"]+)"', asked.text)
        assert key is not None
        assert all(r.state == evq.JobState.PENDING for r in await ctx.jobs()
                   if r.id in jobs["pending"])  # nothing done before confirming
        late = await ctx.enqueue("later", {"n": "late"})  # came to match since
        confirm = {"csrf": token, "confirm": "yes", "key": key.group(1),
                   "reason": "sale over"}
        done = await http.post("/bulk/cancel", data=confirm)
        again = await http.post("/bulk/cancel", data=confirm)  # a refresh, a double click
        assert done.status_code == again.status_code == 303
        shown = (await http.get(done.headers["location"])).text
        asked = await http.post("/bulk/retry", data={
            "csrf": token, "queue": "geo", "state": "expired"})
        key = re.search(r'name="key" value="([^"]+)"', asked.text)
        assert key is not None
        refused = await http.post("/bulk/cancel", data={  # not the action counted for
            "csrf": token, "confirm": "yes", "key": key.group(1)})
        retried = await http.post("/bulk/retry", data={
            "csrf": token, "confirm": "yes", "key": key.group(1)})
        await http.post("/bulk/retry", data={  # posted twice: still one retry
            "csrf": token, "confirm": "yes", "key": key.group(1)})
        retried_page = (await http.get(retried.headers["location"])).text
    assert "4 jobs done" in shown
    states = {r.id: r.state for r in await ctx.jobs()}
    # Exactly the four counted, once each, and not the job enqueued after the count.
    assert all(states[i] == evq.JobState.CANCELLED for i in [jobs["hostile"], *jobs["pending"]])
    assert states[late] == evq.JobState.PENDING
    cancels = [e for e in await ctx.events(limit=10_000) if e.kind == "cancel"]
    assert len(cancels) == 4 and {e.data["reason"] for e in cancels} == {"sale over"}
    assert refused.status_code == 400 and "another action" in refused.text
    assert "1 job done" in retried_page
    geo = [r.state for r in await ctx.jobs() if r.queue == "geo"]
    assert sorted(geo) == [evq.JobState.EXPIRED, evq.JobState.PENDING]  # one retry, once



async def test_travel_keeps_a_relative_time_fixed_and_crosses_archives(db: Path,
                                                                       tmp_path: Path) -> None:
    from evq import archive

    async with evq.Context(db) as ctx:
        ctx.define("n", None)
        gone = await ctx.enqueue("n", {"x": 1})
        kept = await ctx.enqueue("n", {"x": 2})
        before_archive = (await ctx.events(limit=100, seals=True))[-1].position
        await ctx.delete(gone, "cleanup")
        archive.archive(db, time.time() + 1, tmp_path / "old.jsonl.gz")
        later = await ctx.enqueue("n", {"x": 3})
        async with client(evq.web.app(ctx)) as http:
            # Before an archive (positions with holes): it builds; the archived job's
            # events are in the archive file, not the ledger, so it is not shown.
            past = await http.get("/jobs", params={"upto": str(before_archive)})
            assert past.status_code == 200, past.text
            assert ids_in(past.text) == [kept] and gone not in past.text
            # "0s" (how long ago) is read once: the page is sent to the time it stood
            # for, so that a reload, its links and "Search older jobs" stay there.
            sent = await http.get("/jobs", params={"at": "0s", "queue": "q"})
            assert sent.status_code == 303
            fixed = sent.headers["location"]
            assert "at=0s" not in fixed and "queue=q" in fixed
            assert re.search(r"at=20\d\d-", unquote(fixed))
            page = (await http.get(fixed)).text
            assert "at=0s" not in page and re.search(r"at=20\d\d-", page)
            assert (await http.get(fixed)).status_code == 200  # a fixed time stays put
            travelled = re.search(r'Back to now</a>', page)
            assert travelled is not None
            back = re.search(r'href="([^"]*)">Back to now', page)
            assert back is not None and back.group(1).replace("&amp;", "&") == "/jobs?queue=q"
    assert later not in past.text


async def test_a_verify_that_cannot_run_says_why_on_the_health_page(
        filled: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from evq import verify

    def no_room(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(verify, "verify_ledger", no_room)
    ctx, _ = filled
    web = evq.web.app(ctx, read_only=True)  # verify writes nothing: allowed read-only
    async with client(web) as http:
        token = csrf_token(web.state.evq.secret)
        assert (await http.post("/health/verify", data={"csrf": token})).status_code == 303
        await web.state.evq.verifying.task
        page = await http.get("/health")
    assert page.status_code == 200
    assert "Verify could not run: OSError: [Errno 28] No space left on device" in page.text
    assert ">Verify now</button>" in page.text  # and it can be run again


async def test_evq_web_says_where_it_serves_and_ctrl_c_stops_it(filled: Any, db: Path) -> None:
    import signal
    import socket

    with socket.socket() as probe:  # a port free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "evq", "web", "--db", str(db), "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith(f"evq web: http://127.0.0.1:{port} shows {db}"), line
        async with httpx.AsyncClient() as http:  # it listens before it says so
            answer = await http.get(f"http://127.0.0.1:{port}/healthz")
        assert answer.text == "ok\n"
        taken = await asyncio.create_subprocess_exec(  # the port is taken: said, exit 2
            sys.executable, "-m", "evq", "web", "--db", str(db), "--port", str(port),
            stderr=asyncio.subprocess.PIPE)
        assert taken.stderr is not None
        assert await asyncio.wait_for(taken.wait(), 30) == 2
        said = (await taken.stderr.read()).decode()
        assert "cannot listen" in said and "Traceback" not in said
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 130  # "interrupted", as documented
        assert proc.stderr is not None
        assert b"Traceback" not in await proc.stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
