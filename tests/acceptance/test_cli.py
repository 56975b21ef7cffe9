"""The real `evq` command, run in a subprocess (`python -m evq ...`): the demo, reading the
event log and job timelines, replay, verify (and what it catches), schema and migrate.

One demo ledger is made per module and only read by the tests (each test that changes a
ledger works on its own copy)."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

TIMEOUT = 10  # seconds any one command may take; the demo included
DEMO_STATES = {"send_welcome_email": "succeeded", "charge_card": "succeeded",
               "send_reminder": "succeeded", "sync_inventory": "expired"}
EVENT_KEYS = {"position", "at", "kind", "job_id", "queue", "job", "attempt", "worker", "data"}


def evq(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("EVQ_DB", None)
    return subprocess.run([sys.executable, "-m", "evq", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


def copy_ledger(source: Path, target: Path) -> Path:
    for suffix in ("", "-wal"):
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")
    return target


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    where = tmp_path_factory.mktemp("demo")
    db = where / "demo.db"
    result = evq("demo", "--db", db, cwd=where)  # raises TimeoutExpired past TIMEOUT
    return db, result


@pytest.fixture(scope="module")
def events(demo: tuple[Path, subprocess.CompletedProcess[str]]) -> list[dict]:
    return [json.loads(line) for line in ok(evq("events", "--db", demo[0], "--json"))
            .splitlines()]


def shared_prefix(a: str, b: str) -> str:
    """The longest common prefix of two strings."""
    length = 0
    while length < min(len(a), len(b)) and a[length] == b[length]:
        length += 1
    return a[:length]


def job_ids(events: list[dict]) -> dict[str, str]:
    """Job name -> id, from the enqueue events."""
    return {e["job"]: e["job_id"] for e in events if e["kind"] == "enqueue"}


# --- demo -------------------------------------------------------------------------------
def test_demo_runs_every_job_to_its_final_state(demo):
    db, result = demo
    out = ok(result)
    headers = re.findall(r"^job (\w+)\s+(\w+)\s+queue=demo\s+state=(\w+)", out, re.M)
    assert {name: state for _, name, state in headers} == DEMO_STATES
    assert len(headers) == 4
    assert out.count("state=succeeded") == 3 and out.count("state=expired") == 1
    assert "reason=max_attempts" in out  # the expired job says why
    assert db.exists() and not (db.parent / "evq-demo.db").exists()  # --db was used


def test_demo_ledger_verifies(demo):
    out = ok(evq("verify", "--db", demo[0]))
    assert out.startswith("ok")
    assert "MISMATCH" not in out


# --- events -----------------------------------------------------------------------------
def test_events_prints_every_kind_of_the_demo(demo, events):
    lines = ok(evq("events", "--db", demo[0])).splitlines()
    # position, date, time, kind, job#short-id, ...
    kinds = {line.split()[3] for line in lines}
    assert {"enqueue", "dequeue", "run", "success", "error", "expire"} <= kinds
    assert len(lines) == len(events)
    assert [int(line.split()[0]) for line in lines] == [e["position"] for e in events]
    assert not any("\x1b[" in line for line in lines)  # no colour into a pipe


def test_events_json_lines(events):
    assert events
    positions = [e["position"] for e in events]
    assert all(a < b for a, b in itertools.pairwise(positions))
    for event in events:
        assert event.keys() >= EVENT_KEYS, event
        assert isinstance(event["data"], dict)
        assert datetime.fromisoformat(event["at"]).utcoffset() == timedelta(0)
    assert {"enqueue", "dequeue", "run", "success", "error", "expire"} <= {
        e["kind"] for e in events}
    ids = job_ids(events)
    assert set(ids) == set(DEMO_STATES)
    for event in events:
        if event["kind"] == "success":
            assert event["job"] != "sync_inventory"
        if event["kind"] == "expire":
            assert event["job_id"] == ids["sync_inventory"] and event["attempt"] == 3
    charged = [e for e in events if e["job"] == "charge_card" and e["kind"] == "success"]
    assert len(charged) == 1 and charged[0]["data"]["result"] == {"charged": 4200, "tries": 3}


def test_events_filtered_by_kind_and_job(demo, events):
    ids = job_ids(events)
    out = ok(evq("events", "--db", demo[0], "--json", "--kind", "error",
                 "--job", ids["charge_card"]))
    found = [json.loads(line) for line in out.splitlines()]
    assert [(e["kind"], e["attempt"]) for e in found] == [("error", 1), ("error", 2)]


# --- history ----------------------------------------------------------------------------
def test_history_by_short_id_and_by_unique_prefix(demo, events):
    db = demo[0]
    ids = job_ids(events)
    expired = ids["sync_inventory"]
    others = [i for i in ids.values() if i != expired]
    # The short id the CLI shows everywhere: the id's last 8 characters.
    out = ok(evq("history", expired[-8:], "--db", db))
    assert out.splitlines()[0].startswith(f"job {expired}  sync_inventory")
    assert "state=expired" in out.splitlines()[0]
    assert "reason=max_attempts" in out
    # A prefix long enough to name one job (at least 8 characters).
    length = max(8, *(len(shared_prefix(expired, o)) + 1 for o in others))
    out = ok(evq("history", expired[:length], "--db", db, "--json"))
    timeline = [json.loads(line) for line in out.splitlines()]
    assert {e["job_id"] for e in timeline} == {expired}
    assert [e["kind"] for e in timeline] == [e["kind"] for e in events
                                            if e["job_id"] == expired]
    assert timeline[-2:][0]["kind"] == "error" and timeline[-1]["kind"] == "expire"


def test_history_of_an_ambiguous_prefix_is_refused(demo, events):
    ids = sorted(job_ids(events).values())
    # Ids begin with the time they were made; the demo enqueues its jobs together.
    # (The first 8 hex digits change every 65 s: of 4 ids made within milliseconds, two
    # neighbours in sorted order share them.)
    shared = max((shared_prefix(a, b) for a, b in itertools.pairwise(ids)), key=len)
    assert len(shared) >= 8, ids
    result = evq("history", shared[:8], "--db", demo[0])
    assert result.returncode == 2
    assert "more than one job" in result.stderr and result.stdout == ""


def test_history_of_an_unknown_job(demo):
    result = evq("history", "ffffffffeeeeeeee", "--db", demo[0])
    assert result.returncode == 3, result  # not found
    assert "no job with id 'ffffffffeeeeeeee'" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


# --- no ledger there --------------------------------------------------------------------
@pytest.mark.parametrize("command", [["events"], ["history", "abc"], ["jobs"], ["verify"]])
def test_a_missing_ledger_is_not_found_and_is_not_created(tmp_path, command):
    missing = tmp_path / "missing.db"
    result = evq(*command, "--db", missing)
    assert result.returncode == 3, result
    assert f"no ledger at {missing}" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no file, no -wal, no -shm


def test_a_path_in_a_missing_directory(tmp_path):
    path = "/nonexistent/path.db"
    result = evq("events", "--db", path)
    assert result.returncode == 3, result
    assert f"no ledger at {path}" in result.stderr and "Traceback" not in result.stderr
    assert not Path(path).exists() and not Path(path).parent.exists()


def test_a_sqlite_file_without_the_schema(tmp_path):
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    result = evq("events", "--db", other)
    assert result.returncode == 2, result
    assert "not an evq ledger" in result.stderr


@pytest.mark.parametrize("command", ["events", "verify"])
def test_a_file_that_is_not_a_database(tmp_path, command):
    junk = tmp_path / "notes.txt"
    junk.write_text("this is not a database\n" * 100)
    result = evq(command, "--db", junk)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and str(junk) in result.stderr


# --- replay -----------------------------------------------------------------------------
def rows(db: Path, query: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def test_replay_rebuilds_the_same_state(demo, tmp_path):
    db = demo[0]
    target = tmp_path / "replayed.db"
    head = rows(db, "SELECT max(position), count(*) FROM evq_events")[0]
    out = ok(evq("replay", "--db", db, "--to", target))
    assert f"replayed {head[1]} events" in out
    assert [p.name for p in tmp_path.iterdir() if "replayed" in p.name] == ["replayed.db"]
    assert ok(evq("verify", "--db", target)).startswith("ok")
    jobs = "SELECT * FROM evq_jobs ORDER BY id"
    assert rows(target, jobs) == rows(db, jobs)
    assert rows(target, "SELECT * FROM evq_events ORDER BY position") == \
        rows(db, "SELECT * FROM evq_events ORDER BY position")
    # Built without a journal, it is handed over as an ordinary ledger, in WAL mode.
    assert rows(target, "PRAGMA journal_mode") == [("wal",)]


def test_replay_upto_a_position(demo, events, tmp_path):
    db = demo[0]
    ids = job_ids(events)
    # Stop just after charge_card's first error: it must be pending there, not done.
    upto = next(e["position"] for e in events
                if e["job"] == "charge_card" and e["kind"] == "error")
    target = tmp_path / "then.db"
    out = ok(evq("replay", "--db", db, "--to", target, "--upto", upto))
    assert f"(up to position {upto})" in out
    assert rows(target, "SELECT max(position) FROM evq_events") == [(upto,)]
    state = dict(rows(target, "SELECT id, state FROM evq_jobs"))
    assert state[ids["charge_card"]] == "pending"
    assert state[ids["send_welcome_email"]] == "succeeded"


def test_replay_refuses_to_overwrite(demo, tmp_path):
    target = tmp_path / "there.db"
    target.write_bytes(b"keep me")
    result = evq("replay", "--db", demo[0], "--to", target)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert target.read_bytes() == b"keep me"


# --- verify catches tampering -----------------------------------------------------------
def test_a_plain_copy_verifies(demo, tmp_path):
    """The copying the tampering tests do is harmless by itself."""
    copy = copy_ledger(demo[0], tmp_path / "copy.db")
    assert ok(evq("verify", "--db", copy)).startswith("ok")


@pytest.mark.parametrize("restore_trigger", [False, True])
def test_verify_finds_an_edited_success_event(demo, events, tmp_path, restore_trigger):
    copy = copy_ledger(demo[0], tmp_path / "copy.db")
    charged = next(e for e in events if e["job"] == "charge_card" and e["kind"] == "success")
    conn = sqlite3.connect(copy, isolation_level=None)
    trigger = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' "
                           "AND name = 'evq_events_no_update'").fetchone()[0]
    conn.execute("DROP TRIGGER evq_events_no_update")
    edited = conn.execute("UPDATE evq_events SET data = json_set(data, '$.result.charged', 1)"
                          " WHERE position = ?", (charged["position"],)).rowcount
    assert edited == 1
    if restore_trigger:  # cover the tracks: only the edit itself is left to find
        conn.execute(trigger)
    conn.close()

    result = evq("verify", "--db", copy)
    assert result.returncode == 1, result
    lines = result.stdout.splitlines()
    assert lines[0] == "MISMATCH"
    assert any(line.startswith("replaying ") and "does not give the stored state" in line
               for line in lines), lines
    assert f"hash chain broken at position {charged['position']}" in result.stdout
    assert ("append-only rule is off" in result.stdout) is not restore_trigger


def test_verify_finds_an_edited_projection(demo, events, tmp_path):
    copy = copy_ledger(demo[0], tmp_path / "copy.db")
    expired = job_ids(events)["sync_inventory"]
    conn = sqlite3.connect(copy, isolation_level=None)
    assert conn.execute("UPDATE evq_jobs SET state = 'succeeded' WHERE id = ?",
                        (expired,)).rowcount == 1
    conn.close()
    result = evq("verify", "--db", copy)
    assert result.returncode == 1, result
    assert result.stdout.startswith("MISMATCH")
    assert "stored, not rebuilt" in result.stdout and expired in result.stdout
    assert "hash chain broken" not in result.stdout  # the events themselves are intact


# --- schema and migrate -----------------------------------------------------------------
def test_schema_prints_the_sql():
    out = ok(evq("schema"))
    assert "CREATE TABLE evq_events" in out and "CREATE TABLE evq_jobs" in out
    assert "evq_events_no_update" in out and "evq_events_no_delete" in out
    with sqlite3.connect(":memory:") as conn:  # it is SQL that SQLite accepts
        conn.executescript(out)
        assert conn.execute("SELECT count(*) FROM evq_events").fetchone() == (0,)


def test_migrate_creates_a_ledger(tmp_path):
    new = tmp_path / "new.db"
    out = ok(evq("migrate", "--db", new))
    found = re.fullmatch(rf"{re.escape(str(new))}: schema version 0 -> (\d+)\n", out)
    assert found, out
    version = int(found.group(1))
    assert version >= 1 and new.exists()
    # Again: nothing to do, same version; and the new ledger is a valid, empty one.
    assert ok(evq("migrate", "--db", new)) == f"{new}: schema version {version} -> {version}\n"
    assert ok(evq("verify", "--db", new)).startswith("ok: 0 events")
    assert ok(evq("events", "--db", new)) == ""


def test_every_command_takes_a_sqlite_url_for_its_ledger(demo, tmp_path: Path):
    db = demo[0]
    by_url = ok(evq("jobs", "--db", f"sqlite:///{db}"))
    assert by_url == ok(evq("jobs", "--db", db))
    assert "ok" in ok(evq("verify", "--db", f"sqlite:///{db}")).lower()
    fresh = tmp_path / "fresh.db"
    ok(evq("migrate", "--db", f"sqlite:///{fresh}"))
    assert fresh.is_file()


def test_a_postgresql_server_that_cannot_be_reached_is_a_typed_error_without_password():
    result = evq("jobs", "--db", "postgresql://evq:secret@127.0.0.1:1/test?connect_timeout=2")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "cannot be reached" in result.stderr
    assert "postgresql://evq:***@127.0.0.1:1/test" in result.stderr
    assert "secret" not in result.stderr + result.stdout
