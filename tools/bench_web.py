"""The dashboard on a big ledger: how long each page takes to answer, in process through
an ASGI client (no network), on the ledger tools/bench_scale.py builds.

    python tools/bench_web.py [--events 1000000] [--ledger PATH] [--repeat 5] [--json]

Builds the ledger first if it is missing (as bench_scale.py does, same defaults: no-op
jobs over hours of fake time, then failed and pending ones). Each page is fetched
`--repeat` times after one warm-up fetch; the median and the slowest are reported, in
milliseconds. Then time travel to the middle of the history: the first page there
(which answers with the progress of building the ledger as it stood), how long the
build takes, and the next page. Not a test: it asserts only that each page
answered 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from bench_scale import _build, _first_job

import evq.web
from evq import stats
from evq.ledger import open_ledger
from evq.web import pages as pages_module


async def _time_pages(path: Path, repeat: int) -> dict[str, Any]:
    some_job = _first_job(path)
    pages = {
        "overview": "/",
        "jobs": "/jobs",
        "jobs_pending": "/jobs?state=pending",
        "jobs_succeeded_page_2": None,  # filled from the first page's "older" link
        "jobs_failed": "/jobs?state=failed",
        "jobs_by_name": "/jobs?name=noop",
        "jobs_text": "/jobs?text=%22i%22%3A5",
        "job": f"/jobs/{some_job}",
        "queues": "/queues",
        "workers": "/workers",
        "subscribers": "/subscribers",
        "health": "/health",
        "metrics": "/metrics",
    }
    results: dict[str, Any] = {}
    transport = httpx.ASGITransport(app=evq.web.app(path, read_only=True))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        first = await http.get("/jobs?state=succeeded")
        older = first.text.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0]
        pages["jobs_succeeded_page_2"] = older.replace("&amp;", "&")
        for name, url in pages.items():
            assert url is not None
            times = []
            for round_ in range(repeat + 1):
                start = time.perf_counter()
                answer = await http.get(url)
                elapsed = (time.perf_counter() - start) * 1000
                assert answer.status_code == 200, (name, answer.status_code, answer.text[:300])
                if round_:
                    times.append(elapsed)
            results[name] = {"median_ms": round(statistics.median(times), 1),
                             "max_ms": round(max(times), 1)}
        # The overview's figures and chart at the ledger's last moment (its fake clock
        # ended long ago, so the live overview's last minutes and hour hold nothing).
        ledger = open_ledger(path)
        end = next(iter(ledger.read_events_back(ledger.last_position() + 1))).timestamp
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            stats.compute(ledger, end - pages_module.FIGURES_OVER, end,
                          pages_module.FIGURES_FROM)
            ledger.finished_over_time(end - 3600, end, 60)
            ledger.backlog(end)
            times.append((time.perf_counter() - start) * 1000)
        results["overview_figures"] = {"median_ms": round(statistics.median(times), 1),
                                       "max_ms": round(max(times), 1)}
        # Time travel to the middle of the history: the first page answers at once with
        # the build's progress (the past ledger is built from every event up to there);
        # the page reloads itself until the build is done; later pages read it.
        middle = _head(path) // 2
        start = time.perf_counter()
        first = await http.get(f"/jobs?upto={middle}")
        first_ms = (time.perf_counter() - start) * 1000
        assert first.status_code in (200, 202), first.text[:300]
        while (await http.get(f"/?upto={middle}")).status_code == 202:
            await asyncio.sleep(0.1)  # as the page's own reload does, once a second
        built_s = time.perf_counter() - start
        start = time.perf_counter()
        await http.get(f"/?upto={middle}")
        results["travel_middle"] = {
            "first_ms": round(first_ms, 1), "built_s": round(built_s, 1),
            "next_ms": round((time.perf_counter() - start) * 1000, 1)}
    return results


def _head(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT max(position) FROM evq_events").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--ledger", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    path = args.ledger or Path(tempfile.gettempdir()) / f"evq-scale-{args.events}.db"
    if not path.exists():
        asyncio.run(_build(path, args.events, 1000, 60.0))
    evq.migrate(path)  # a ledger built by an older evq gets this one's indexes
    results = asyncio.run(_time_pages(path, args.repeat))
    if args.json:
        print(json.dumps(results))
        return
    for name, figures in results.items():
        print(f"{name:<24} " + "  ".join(f"{key}={value}" for key, value in figures.items()))


if __name__ == "__main__":
    main()
