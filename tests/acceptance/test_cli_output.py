"""What the reading commands print: `events --limit` filters first, `jobs --limit/--json`,
and tidy human output (aligned columns, one format for seconds, rates at a sensible
precision)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

import evq

EXIT_OK = 0


def evq_cli(*args: str | Path, cwd: Path | None = None) -> str:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("EVQ_DB", None)
    result = subprocess.run([sys.executable, "-m", "evq", *map(str, args)], cwd=cwd,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_OK, (result.args, result.stderr)
    assert result.stderr == ""
    return result.stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("demo")
    evq_cli("demo", "--db", where / "demo.db", cwd=where)
    return where / "demo.db"


@pytest.fixture(scope="module")
def every_event(demo: Path) -> list[dict]:
    return [json.loads(line) for line in
            evq_cli("events", "--db", demo, "--json", "--seals").splitlines()]


def positions(output: str) -> list[int]:
    return [int(line.split()[0]) for line in output.splitlines()]


# --- events --limit ----------------------------------------------------------------------
def test_limit_counts_the_events_shown_not_the_rows_read(demo: Path, every_event):
    shown = [e["position"] for e in every_event if e["kind"] != "seal"]
    assert positions(evq_cli("events", "--db", demo, "--limit", "1")) == shown[-1:]
    assert positions(evq_cli("events", "--db", demo, "--limit", "3")) == shown[-3:]
    assert evq_cli("events", "--db", demo, "--limit", "0") == ""
    everything = evq_cli("events", "--db", demo)
    assert evq_cli("events", "--db", demo, "--limit", "100000") == everything


def test_limit_applies_after_the_filters(demo: Path, every_event):
    enqueues = [e for e in every_event if e["kind"] == "enqueue"]
    out = evq_cli("events", "--db", demo, "--kind", "enqueue", "--limit", "2", "--json")
    assert [json.loads(line)["position"] for line in out.splitlines()] == \
        [e["position"] for e in enqueues[-2:]]
    job = enqueues[0]["job_id"]
    mine = [e["position"] for e in every_event if e["job_id"] == job and e["kind"] != "seal"]
    assert positions(evq_cli("events", "--db", demo, "--job", job, "--limit", "2")) == \
        mine[-2:]
    seals = [e["position"] for e in every_event if e["kind"] == "seal"]
    assert positions(evq_cli("events", "--db", demo, "--seals", "--limit", "1")) == \
        [every_event[-1]["position"]] == seals[-1:]


def test_with_since_the_limit_takes_the_first_events_after_it(demo: Path, every_event):
    shown = [e for e in every_event if e["kind"] != "seal"]
    since = shown[4]["at"]
    after = [e["position"] for e in shown if e["at"] >= since]
    out = evq_cli("events", "--db", demo, "--since", since, "--limit", "3")
    assert positions(out) == after[:3]


async def test_since_an_event_time_as_shown_includes_that_event(tmp_path: Path):
    # Times are shown to the microsecond: this one's stored float is a fraction below
    # the microsecond it is shown as, so the search by time must start before it.
    db = tmp_path / "ledger.db"
    clock = evq.FakeClock(1_750_000_000.0)
    async with evq.Context(db, clock=clock) as ctx:
        ctx.define("job", None)
        await ctx.enqueue("job", 1)
        clock.advance(10.0000007)
        await ctx.enqueue("job", 2)
    events = [json.loads(line) for line in evq_cli("events", "--db", db, "--json").splitlines()]
    second = events[1]
    assert second["at"].endswith(".000001+00:00")  # stored as .00000072...
    assert positions(evq_cli("events", "--db", db, "--since", second["at"])) == [
        second["position"]]
    stats = json.loads(evq_cli("stats", "--db", db, "--json", "--since", second["at"]))
    assert stats["window_s"] == 0.0 and stats["queues"][0]["queue"] == "default"


def test_times_can_be_given_as_how_long_ago(demo: Path, every_event):
    # The demo ran seconds ago: an hour ago is before all of it.
    shown = [e["position"] for e in every_event if e["kind"] != "seal"]
    assert positions(evq_cli("events", "--db", demo, "--since", "1h")) == shown
    assert evq_cli("events", "--db", demo, "--until", "1h") == ""
    assert positions(evq_cli("events", "--db", demo, "--since", "2d", "--limit", "2")) == \
        shown[:2]
    whole = json.loads(evq_cli("stats", "--db", demo, "--json"))["queues"]
    recent = json.loads(evq_cli("stats", "--db", demo, "--json", "--since", "90m"))["queues"]
    assert [(q["queue"], q["succeeded"]) for q in recent] == [
        (q["queue"], q["succeeded"]) for q in whole]
    wrong = subprocess.run([sys.executable, "-m", "evq", "events", "--db", str(demo),
                            "--since", "1y"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert "'1y'" in wrong.stderr and "15m, 1h or 2d" in wrong.stderr
    assert "Traceback" not in wrong.stderr


# --- jobs --------------------------------------------------------------------------------
def test_jobs_json_has_every_field_of_the_record(demo: Path):
    lines = evq_cli("jobs", "--db", demo, "--json").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 4
    names = {field.name for field in attrs.fields(evq.JobRecord)}
    for record in records:
        assert set(record) == names
    charged = next(r for r in records if r["name"] == "charge_card")
    assert (charged["state"], charged["attempt"], charged["result"]) == (
        "succeeded", 3, {"charged": 4200, "tries": 3})
    assert charged["enqueued_at"].endswith("+00:00")


def test_jobs_limit_shows_the_newest(demo: Path):
    every = [json.loads(line)["id"] for line in
             evq_cli("jobs", "--db", demo, "--json").splitlines()]
    newest = evq_cli("jobs", "--db", demo, "--limit", "2").splitlines()
    assert newest[0].split()[0] == "id"
    assert [line.split()[0] for line in newest[1:]] == every[-2:]
    succeeded = evq_cli("jobs", "--db", demo, "--state", "succeeded", "--limit", "1",
                        "--json")
    assert [json.loads(line)["name"] for line in succeeded.splitlines()] == ["send_reminder"]


# --- tidy human output -------------------------------------------------------------------
def columns_line_up(lines: list[str]) -> None:
    """Each header (columns are two spaces or more apart) starts where its column's
    cells start."""
    header = lines[0]
    starts = [match.start() for match in re.finditer(r"(?<=  )\S", header)]
    assert starts
    for line in lines[1:]:
        for start in starts:
            assert line[start - 2:start] == "  " and line[start] != " ", (header, line)


async def test_definitions_line_up_whatever_the_names(tmp_path: Path):
    db = tmp_path / "l.db"
    async with evq.Context(db) as ctx:
        ctx.define("send", None, queue="HIGH_PRIORITY_NOTIFICATIONS", lease=1)
        ctx.define("a_rather_long_job_name_for_reports", None, queue="q", lease=60.0,
                   max_attempts=None, cron="30 2 * * *")
        await ctx.deploy()
        await ctx.orchestrator().tick()
    lines = evq_cli("definitions", "--db", db).splitlines()
    assert lines[0].split() == ["job", "queue", "max_attempts", "lease", "priority",
                                "schedule", "next", "run"]
    columns_line_up(lines)
    by_name = {line.split()[0]: line.split() for line in lines[1:]}
    assert by_name["send"][1:4] == ["HIGH_PRIORITY_NOTIFICATIONS", "3", "1s"]
    assert by_name["a_rather_long_job_name_for_reports"][1:4] == ["q", "-", "60s"]
    assert "cron 30 2 * * *" in lines[1]


async def test_stats_rates_and_times_at_three_significant_digits(tmp_path: Path):
    db = tmp_path / "l.db"
    clock = evq.FakeClock()
    async with evq.Context(db, clock=clock) as ctx:
        ctx.define("ok", lambda p: None, queue="a_queue_with_a_long_name")
        for n in range(4):
            await ctx.enqueue("ok", n)
        clock.advance(1.23456)  # they wait 1234.56 ms
        await ctx.drain()
        clock.advance(1.76544)  # a window of 3 s: 4 jobs / 3 s = 1.333... jobs/s
        await ctx.enqueue("ok", 5)
    lines = evq_cli("stats", "--db", db).splitlines()
    columns_line_up(lines[:2])
    row = lines[1].split()
    assert row[:5] == ["a_queue_with_a_long_name", "4", "0", "0", "1.33"]
    assert row[6] == "1235/1235/1235"
    assert lines[2] == "window: 3.00s"


async def test_subscribers_line_up(tmp_path: Path):
    db = tmp_path / "l.db"
    async with evq.Context(db) as ctx:
        ctx.define("job", None)
        await ctx.enqueue("job", 1)
        for name in ("a", "a_durable_handler_with_a_name_longer_than_twenty_four"):
            ctx.add_event_handler(lambda event: None, durable=name)
        await ctx.flush_events()
    lines = evq_cli("subscribers", "--db", db).splitlines()
    assert lines[0].split() == ["name", "position", "head", "lag", "held_by", "updated"]
    columns_line_up(lines)
