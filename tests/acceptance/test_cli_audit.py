"""The CLI as a newcomer meets it: the demo, then reading the ledger it wrote."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

import evq


def evq_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evq", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("demo") / "demo.db"
    result = subprocess.run([sys.executable, "-m", "evq", "demo", "--db", str(db)],
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    states = [line.split("state=")[1] for line in result.stdout.splitlines()
              if line.startswith("job ") and "state=" in line]
    assert sorted(states) == ["expired", "succeeded", "succeeded", "succeeded"]
    assert "timelines read back from the ledger" in result.stdout
    return db


def test_missing_ledger_is_a_clear_error_and_creates_nothing(tmp_path: Path):
    missing = tmp_path / "nope" / "ledger.db"
    result = evq_cli("events", "--db", str(missing))
    assert result.returncode == 3 and "no ledger at" in result.stderr
    assert not missing.exists()
    no_db = evq_cli("events", cwd=tmp_path)
    assert no_db.returncode == 2 and "--db" in no_db.stderr


def test_events_filters_by_queue_and_time(demo_db: Path):
    lines = evq_cli("events", "--db", str(demo_db), "--json").stdout.splitlines()
    events = [json.loads(line) for line in lines]
    middle = events[len(events) // 2]["at"]
    since = [json.loads(x) for x in evq_cli(
        "events", "--db", str(demo_db), "--json", "--since", middle).stdout.splitlines()]
    assert since and all(e["at"] >= middle for e in since) and len(since) < len(events)
    assert evq_cli("events", "--db", str(demo_db), "--queue", "nope").stdout == ""
    bad = evq_cli("events", "--db", str(demo_db), "--since", "yesterday")
    assert bad.returncode == 2 and "since" in bad.stderr


async def test_events_follow_tails_commits_from_other_processes(tmp_path: Path):
    import asyncio

    import evq

    db = tmp_path / "follow.db"
    async with evq.Context(db) as ctx:
        ctx.define("job", None, queue="q")
        await ctx.enqueue("job", "before")
        follower = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "evq", "events", "--db", str(db), "--json", "--follow",
            "--poll", "0.01", stdout=asyncio.subprocess.PIPE)
        try:
            assert follower.stdout is not None
            first = json.loads(await asyncio.wait_for(follower.stdout.readline(), 15))
            assert first["data"]["payload"] == "before"
            await ctx.enqueue("job", "after")
            second = json.loads(await asyncio.wait_for(follower.stdout.readline(), 15))
            assert second["data"]["payload"] == "after"
        finally:
            follower.terminate()
            await follower.wait()


def test_retry_cancel_and_delete_from_the_command_line(demo_db: Path, tmp_path: Path):
    db = tmp_path / "ops.db"
    db.write_bytes(demo_db.read_bytes())
    expired = json.loads(evq_cli("events", "--db", str(db), "--json", "--kind",
                                 "expire").stdout.splitlines()[0])["job_id"]
    done = evq_cli("retry", expired[-8:], "--db", str(db), "--reason", "warehouse is back")
    assert done.returncode == 0, done.stderr
    new_id = done.stdout.split()[-1]
    history = evq_cli("history", expired, "--db", str(db), "--json").stdout.splitlines()
    retry = json.loads(history[-1])
    assert (retry["kind"], retry["data"]["new_job_id"]) == ("retry", new_id)
    new_events = [json.loads(x) for x in evq_cli("history", new_id, "--db", str(db),
                                                 "--json").stdout.splitlines()]
    assert new_events[0]["data"]["retry_of"] == expired
    assert new_events[0]["data"]["payload"] == {"warehouse": "north"}
    again = evq_cli("retry", new_id, "--db", str(db))
    assert again.returncode == 2 and "only failed, expired or cancelled" in again.stderr
    due = evq_cli("run-now", new_id, "--db", str(db), "--reason", "now please")
    assert due.returncode == 0 and f"{new_id} was already due (run_at " in due.stdout
    assert "nothing written" in due.stdout
    assert "run_now" not in evq_cli("history", new_id, "--db", str(db)).stdout
    producer = evq.Context(db)
    producer.define("tomorrow", None)
    with producer.sync() as sync:
        later = sync.enqueue("tomorrow", {"n": 1}, delay=86400)
    made_due = evq_cli("run-now", later, "--db", str(db), "--reason", "now please")
    assert made_due.returncode == 0 and f"{later} is due now (run_at " in made_due.stdout
    run_now = json.loads(evq_cli("history", later, "--db", str(db), "--json")
                         .stdout.splitlines()[-1])
    assert (run_now["kind"], run_now["data"]["reason"]) == ("run_now", "now please")
    cancelled = evq_cli("cancel", new_id, "--db", str(db))
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    assert evq_cli("cancel", new_id, "--db", str(db)).returncode == 2  # already ended
    refused = evq_cli("run-now", new_id, "--db", str(db))
    assert refused.returncode == 2 and "only a pending job" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert evq_cli("delete", new_id, "--db", str(db)).returncode == 0
    jobs = evq_cli("jobs", "--db", str(db)).stdout
    assert new_id not in jobs
    assert evq_cli("verify", "--db", str(db)).returncode == 0


def test_export_import_round_trip_is_lossless(demo_db: Path, tmp_path: Path):
    exported = tmp_path / "ledger.jsonl"
    assert evq_cli("export", "--db", str(demo_db), "--to", str(exported)).returncode == 0
    again = evq_cli("export", "--db", str(demo_db), "--to", str(exported))
    assert again.returncode == 2 and "already exists" in again.stderr
    copy = tmp_path / "imported.db"
    result = evq_cli("import", str(exported), "--db", str(copy))
    assert result.returncode == 0 and "hash chain holds" in result.stdout, result.stdout
    assert evq_cli("verify", "--db", str(copy)).returncode == 0
    assert evq_cli("export", "--db", str(copy)).stdout == exported.read_text()
    original = sqlite3.connect(demo_db)
    imported = sqlite3.connect(copy)
    query = "SELECT * FROM evq_jobs ORDER BY id"
    assert original.execute(query).fetchall() == imported.execute(query).fetchall()
    original.close()
    imported.close()
    refused = evq_cli("import", str(exported), "--db", str(copy))
    assert refused.returncode == 2 and "already exists" in refused.stderr


def test_import_refuses_an_illegal_history(demo_db: Path, tmp_path: Path):
    lines = evq_cli("export", "--db", str(demo_db)).stdout.splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines[:1] + lines[4:]) + "\n")  # a claim goes missing
    result = evq_cli("import", str(broken), "--db", str(tmp_path / "x.db"))
    assert result.returncode == 2 and "refused" in result.stderr
    assert not (tmp_path / "x.db").exists()  # nothing left behind
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json\n")
    bad = evq_cli("import", str(garbage), "--db", str(tmp_path / "y.db"))
    assert bad.returncode == 2 and "line 1 is not an exported evq event" in bad.stderr


def test_import_of_nothing_is_refused_and_makes_nothing(tmp_path: Path):
    # What `evq export --db missing.db | evq import - --db new.db` hands over.
    target = tmp_path / "new.db"
    result = subprocess.run([sys.executable, "-m", "evq", "import", "-", "--db", str(target)],
                            input="\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert "no exported events" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_replay_at_a_time(demo_db: Path, tmp_path: Path):
    events = [json.loads(x) for x in evq_cli("events", "--db", str(demo_db),
                                             "--json").stdout.splitlines()]
    cut = events[2]["at"]
    target = tmp_path / "then.db"
    result = evq_cli("replay", "--db", str(demo_db), "--to", str(target), "--at", cut)
    assert result.returncode == 0, result.stderr
    assert f"(as it stood at {cut})" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["then.db"]  # nothing beside it
    conn = sqlite3.connect(target)
    assert conn.execute("SELECT max(at) FROM evq_events").fetchone()[0] <= \
        datetime.fromisoformat(cut).timestamp()
    conn.close()


async def test_stats_per_queue_from_the_events(tmp_path: Path):
    import evq

    db = tmp_path / "stats.db"
    clock = evq.FakeClock()
    async with evq.Context(db, clock=clock) as ctx:
        ctx.define("ok", lambda p: None, queue="fast")
        ctx.define("bad", lambda p: 1 / 0, queue="slow", max_attempts=2,
                   backoff=evq.Fixed(0))
        await ctx.enqueue("ok", 1)
        await ctx.enqueue("ok", 2)
        await ctx.enqueue("bad", 3)
        clock.advance(2)  # everything waits 2 s before it can start
        await ctx.drain()
    result = evq_cli("stats", "--db", str(db), "--json")
    report = json.loads(result.stdout)
    fast, slow = report["queues"]
    assert (fast["queue"], fast["succeeded"], fast["failed"], fast["error_rate"]) == (
        "fast", 2, 0, 0.0)
    assert fast["wait_ms"]["p50"] == 2000.0
    assert (slow["queue"], slow["failed"], slow["attempts"], slow["error_rate"]) == (
        "slow", 1, 2, 1.0)
    table = evq_cli("stats", "--db", str(db)).stdout.splitlines()
    assert table[0].split()[:3] == ["queue", "done", "failed"]
    assert table[1].split()[:3] == ["fast", "2", "0"]


async def test_stats_over_a_window_counts_jobs_enqueued_before_it(tmp_path: Path):
    import evq

    db = tmp_path / "window.db"
    t0 = 1_750_000_000.0
    clock = evq.FakeClock(t0)

    def fails_once(payload: int, job: evq.Job) -> None:
        if job.attempt == 1:
            raise RuntimeError("first try")

    async with evq.Context(db, clock=clock) as ctx:
        ctx.define("ok", lambda p: None, queue="fast")
        ctx.define("flaky", fails_once, queue="slow", max_attempts=2,
                   backoff=evq.Fixed(3600))
        await ctx.enqueue("ok", 1)  # an hour before the others, and before the window
        await ctx.enqueue("flaky", 0)
        clock.advance(10)
        await ctx.drain(queues=["slow"])  # its first try, before the window: it fails
        clock.advance(3590)
        await ctx.enqueue("ok", 2)
        clock.advance(10)
        await ctx.drain()  # ok 1 and 2 start now, after 3,610 s and 10 s; flaky's retry
        clock.advance(100)
        await ctx.enqueue("ok", 3)  # after the window
    since = datetime.fromtimestamp(t0 + 1800, UTC).isoformat()
    until = datetime.fromtimestamp(t0 + 3700, UTC).isoformat()
    report = json.loads(evq_cli("stats", "--db", str(db), "--json", "--since", since,
                                "--until", until).stdout)
    fast, slow = report["queues"]
    assert (fast["succeeded"], fast["attempts"]) == (2, 2)
    assert fast["wait_ms"]["p50"] == (3_610_000.0 + 10_000.0) / 2
    # The retry ran in the window, but the job's wait ended at its first try, before it.
    assert (slow["succeeded"], slow["attempts"], slow["wait_ms"]) == (1, 1, None)
    assert report["window_s"] == 1900.0


def test_colour_on_a_terminal_and_plain_text_when_piped(demo_db: Path):
    import os
    import pty

    def on_a_terminal(env: dict[str, str]) -> bytes:
        leader, follower = pty.openpty()
        try:
            subprocess.run([sys.executable, "-m", "evq", "jobs", "--db", str(demo_db)],
                           stdout=follower, stderr=subprocess.DEVNULL, timeout=60, env=env)
            os.close(follower)
            chunks = []
            while True:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(leader)

    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    assert b"\x1b[32msucceeded" in on_a_terminal(env)
    assert b"\x1b[" not in on_a_terminal({**env, "NO_COLOR": "1"})
    piped = evq_cli("jobs", "--db", str(demo_db)).stdout
    assert "\x1b[" not in piped and piped.splitlines()[0].split()[:3] == ["id", "state", "queue"]
