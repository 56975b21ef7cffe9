"""`/metrics` over the last window, as a scraper parses it: throughput, failures, error
ratios and the wait/run gauge histograms by queue, on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pg_server import drop_handed_out, new_place
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from test_routes import client, fill
from test_routes import filled as filled  # the fixture

import evq
import evq.web


async def scrape(web: Any) -> dict[str, Metric]:
    """The metric families of one scrape, by name, as a Prometheus client parses them."""
    async with client(web) as http:
        answer = await http.get("/metrics")
    assert answer.status_code == 200
    return {family.name: family for family in text_string_to_metric_families(answer.text)}


def value(found: dict[str, Metric], name: str, **labels: str) -> float:
    matching = [s.value for s in found[name].samples if s.name == name and s.labels == labels]
    assert len(matching) == 1, (name, labels, found.get(name))
    return matching[0]


def buckets(found: dict[str, Metric], name: str, queue: str) -> list[tuple[str, float]]:
    """The histogram's (le, count) for a queue, in exposition order."""
    return [(s.labels["le"], s.value) for s in found[name].samples
            if s.name == name + "_bucket" and s.labels["queue"] == queue]


def assert_filled_figures(found: dict[str, Metric]) -> None:
    """What a scraper sees of `fill()`: mail's 2 jobs succeeded, geo's one job expired
    after its one attempt raised; the 4 pending jobs have not run."""
    assert value(found, "evq_window_seconds") == pytest.approx(900.0)
    assert value(found, "evq_jobs_succeeded_in_window", queue="mail") == 2
    assert value(found, "evq_jobs_succeeded_in_window", queue="geo") == 0
    assert value(found, "evq_jobs_failed_in_window", queue="geo") == 1
    assert value(found, "evq_jobs_failed_in_window", queue="mail") == 0
    assert value(found, "evq_attempts_in_window", queue="geo") == 1
    assert value(found, "evq_attempts_errored_in_window", queue="geo") == 1
    assert value(found, "evq_attempt_error_ratio", queue="geo") == 1.0
    assert value(found, "evq_attempt_error_ratio", queue="mail") == 0.0
    assert value(found, "evq_jobs_succeeded_per_second", queue="mail") == pytest.approx(
        2 / 900)
    for name, queue, n in [("evq_job_run_seconds", "mail", 2), ("evq_job_run_seconds", "geo", 1),
                           ("evq_job_wait_seconds", "mail", 2)]:
        counts = buckets(found, name, queue)
        assert counts[-1] == ("+Inf", n)
        assert [c for _, c in counts] == sorted(c for _, c in counts)  # cumulative
        assert [float(le) for le, _ in counts] == sorted(float(le) for le, _ in counts)
        assert value(found, name + "_gcount", queue=queue) == n
    assert value(found, "evq_job_run_seconds_gsum", queue="mail") > 0


async def test_metrics_give_the_last_windows_figures_by_queue(filled: Any) -> None:
    ctx, _ = filled
    found = await scrape(evq.web.app(ctx))
    assert_filled_figures(found)
    for name in ("evq_jobs_succeeded_in_window", "evq_jobs_failed_in_window",
                 "evq_attempt_error_ratio", "evq_jobs_succeeded_per_second",
                 "evq_job_wait_seconds", "evq_job_run_seconds"):
        assert "last window" in found[name].documentation
        assert "not all time" in found[name].documentation
    # What was there before still is.
    assert value(found, "evq_jobs", queue="mail", state="pending") == 4


async def test_waits_fall_in_the_buckets_of_their_known_length(db: Path) -> None:
    # Events are stamped by the fake clock, the window ends at the real time.time():
    # start the clock a little before now, on a whole second so the waits are exact.
    clock = evq.FakeClock(start=float(int(time.time())) - 10)
    async with evq.Context(db, clock=clock) as ctx:
        ctx.define("ok", lambda payload: None, queue="q")
        for _ in range(3):
            await ctx.enqueue("ok", None)
        clock.advance(2.0)
        await ctx.drain()
        found = await scrape(evq.web.app(ctx))
    counts = dict(buckets(found, "evq_job_wait_seconds", "q"))
    assert counts["1.0"] == 0 and counts["2.5"] == 3 and counts["+Inf"] == 3
    assert value(found, "evq_job_wait_seconds_gsum", queue="q") == pytest.approx(6.0)
    # The clock did not move while they ran.
    assert dict(buckets(found, "evq_job_run_seconds", "q"))["0.005"] == 3
    assert value(found, "evq_job_run_seconds_gsum", queue="q") == 0
    assert value(found, "evq_jobs_succeeded_in_window", queue="q") == 3


async def test_a_queue_quiet_over_the_window_reads_zero(db: Path) -> None:
    # Jobs that ran an hour ago are outside the window: the queue is still listed, at
    # 0 (not absent), with empty histograms and no error ratio (no attempts to divide).
    clock = evq.FakeClock(start=time.time() - 3600)
    async with evq.Context(db, clock=clock) as ctx:
        ctx.define("ok", lambda payload: None, queue="q")
        await ctx.enqueue("ok", None)
        await ctx.drain()
        found = await scrape(evq.web.app(ctx))
    assert value(found, "evq_jobs", queue="q", state="succeeded") == 1
    assert value(found, "evq_jobs_succeeded_in_window", queue="q") == 0
    assert value(found, "evq_jobs_succeeded_per_second", queue="q") == 0
    assert buckets(found, "evq_job_run_seconds", "q")[-1] == ("+Inf", 0)
    assert value(found, "evq_job_run_seconds_gsum", queue="q") == 0
    assert found["evq_attempt_error_ratio"].samples == []


async def test_the_same_figures_on_postgresql(postgres_url: str) -> None:
    place = new_place()
    try:
        async with evq.Context(place) as ctx:
            await fill(ctx)
            found = await scrape(evq.web.app(place))
    finally:
        drop_handed_out()
    assert_filled_figures(found)
