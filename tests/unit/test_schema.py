"""The schema: schema.sql and the frozen migrations agree, the append-only rule, replay."""

from __future__ import annotations

import fnmatch
import hashlib
import re
import sqlite3
import tomllib
from importlib import resources
from pathlib import Path

import pytest

import evq
from evq.ledger import open_ledger
from evq.ledger.sqlite import connection, replay, schema

ROOT = Path(__file__).resolve().parents[2]

# The shipped migrations, by version: a migration that has shipped is never edited (a
# ledger already upgraded by it would differ from one upgraded later). A new version adds
# its file and its line here, and changes schema.sql to match.
FROZEN = {
    1: "a219bcbc282e510dfa921be212eabd5b1d3b86952b76c583c1d3d1f1795aad71",
    2: "401cc3d8e878b8c497ab7433c4b7904aa323f63db79c3255cd3186d87fa83e12",
    3: "66b3604bbe73c9caa7fc9103222940dd0437b5a61af2810be98b0d3e704b1138",
    4: "45abe2bed871eb6d7d4018ea65e06f2174c308204748946ebf5bc0622fa81200",
    5: "7fa34af74ca3d3e84dbef83aa3545fa5de32710aff814572ed569e804e906c3e",
}

# SQL as tokens (string literals kept whole, comments and layout dropped).
_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\w+|\S", re.S)


def normalized(sql: str | None) -> str | None:
    if sql is None:  # an index SQLite made for a PRIMARY KEY or UNIQUE constraint
        return None
    return " ".join(t for t in _TOKEN.findall(sql) if not t.startswith(("--", "/*")))


def schema_of(conn: sqlite3.Connection) -> list[tuple[str, str, str, str | None]]:
    """Every object of the schema, as (type, name, table, normalized SQL)."""
    return sorted((kind, name, table, normalized(sql)) for kind, name, table, sql
                  in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))


def index_order(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """Each table's indexes in the order the query planner considers them."""
    tables = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    return {table: [row[1] for row in conn.execute(f"PRAGMA index_list({table})")]
            for table in tables}


def ledger_at(path: Path, version: int) -> sqlite3.Connection:
    """An empty ledger of an older `version`, as the evq of that version made it: its
    migrations applied one by one, each stamping its version."""
    conn = connection.connect(path)
    conn.execute("BEGIN IMMEDIATE")
    for number, script in enumerate(schema.MIGRATIONS[:version], 1):
        for statement in connection._statements(script):
            conn.execute(statement)
        conn.execute("INSERT OR REPLACE INTO evq_meta (key, value) VALUES (?, ?)",
                     (schema.SCHEMA_VERSION_KEY, str(number)))
    conn.execute("COMMIT")
    return conn


@pytest.mark.parametrize("version", range(1, schema.LATEST_VERSION + 1))
def test_schema_sql_equals_the_migrations_from_every_version(tmp_path, version):
    """A ledger made from schema.sql and one migrated up from any older version (from
    version 1: through every migration) have the same tables, indexes and triggers, and
    the same order of indexes (which the query planner sees)."""
    fresh = connection.connect(tmp_path / "fresh.db")
    assert connection.migrate(fresh) == 0  # a new ledger gets schema.sql
    migrated = ledger_at(tmp_path / "migrated.db", version)
    assert connection.migrate(migrated) == version
    assert schema_of(fresh) == schema_of(migrated)
    assert index_order(fresh) == index_order(migrated)
    for conn in (fresh, migrated):
        assert connection.schema_version(conn) == schema.LATEST_VERSION
        assert connection.migrate(conn) == schema.LATEST_VERSION  # idempotent
        conn.close()


def test_schema_sql_as_a_script_stamps_the_last_migrations_version(tmp_path):
    """`evq schema` prints schema.sql; run as one script it makes the same ledger, of
    the version of the last migration."""
    assert schema.schema_sql() == (resources.files("evq.ledger.sqlite") / "schema.sql"
                                   ).read_text("utf-8")
    script = sqlite3.connect(tmp_path / "script.db")
    script.executescript(schema.schema_sql())
    assert connection.schema_version(script) == schema.LATEST_VERSION == len(FROZEN)
    migrated = ledger_at(tmp_path / "migrated.db", schema.LATEST_VERSION)
    assert schema_of(script) == schema_of(migrated)
    tables = {row[0] for row in script.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == schema.TABLES
    script.close()
    migrated.close()


def test_shipped_migrations_are_frozen():
    assert len(schema.MIGRATIONS) == len(FROZEN)
    for version, script in enumerate(schema.MIGRATIONS, 1):
        digest = hashlib.sha256(script.encode()).hexdigest()
        assert digest == FROZEN[version], f"migrations/{version:04d}.sql was edited"


def test_the_trigger_texts_evq_uses_are_the_schemas(tmp_path):
    """The errors the ledger maps are the ones the triggers raise, and archiving
    restores the very trigger it lifts."""
    for error in (schema.STALE, schema.NOT_PENDING, schema.UNKNOWN_JOB, schema.RUNNING,
                  schema.APPEND_ONLY, schema.FLOW):
        assert f"'{error}'" in schema.SCHEMA
    conn = connection.connect(tmp_path / "l.db")
    connection.migrate(conn)
    (stored,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?",
                             ("evq_events_no_delete",)).fetchone()
    assert normalized(schema.EVENTS_NO_DELETE) == normalized(stored + ";")
    conn.close()


def test_the_schema_files_are_packaged():
    """Every SQL file of the engine is matched by the package-data of pyproject.toml,
    so a wheel carries it (it is read with importlib.resources)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["evq.ledger.sqlite"]
    package = resources.files("evq.ledger.sqlite")
    files = ["schema.sql"] + [f"migrations/{entry.name}"
                              for entry in (package / "migrations").iterdir()
                              if entry.name.endswith(".sql")]
    assert len(files) == 1 + schema.LATEST_VERSION
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
        assert (package / name).is_file()


async def test_a_version_1_ledger_upgrades_and_its_history_still_replays(tmp_path):
    """A ledger written under evq's first schema (its own triggers folded these events)
    is migrated in place when this evq opens it; replaying its old events through the new
    triggers gives exactly the migrated state, and it works on."""
    path = tmp_path / "v1.db"
    conn = connection.connect(path)
    conn.execute("BEGIN IMMEDIATE")
    for statement in connection._statements(schema.MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("INSERT INTO evq_meta (key, value) VALUES ('schema_version', '1')")
    enqueue = '{"payload": 1, "run_at": 10.0, "priority": 0, "max_attempts": 2}'
    error = '{"type": "E", "message": "m", "traceback": ""}'
    history = [  # (at, kind, job, attempt, worker, data)
        (10, "enqueue", "a", None, None, enqueue),
        (10, "enqueue", "b", None, None, enqueue),
        (10, "enqueue", "c", None, None, enqueue),
        (11, "dequeue", "a", 1, "w", '{"lease_until": 70}'),
        (11, "run", "a", 1, "w", "{}"),
        (12, "success", "a", 1, "w", '{"result": {"x": 1}}'),
        (11, "dequeue", "b", 1, "w", '{"lease_until": 70}'),
        (12, "error", "b", 1, "w", f'{{"error": {error}, "retry_at": 20}}'),
        (20, "dequeue", "b", 2, "w", '{"lease_until": 80}'),
        (81, "rescue", "b", 2, "r", f'{{"error": {error}, "retry_at": null, '
                                     '"reason": "lease_expired"}'),
        (81, "expire", "b", 2, "r", '{"reason": "max_attempts", "hook": "on_exhausted"}'),
        (82, "cancel", "c", None, None, '{"reason": "no"}'),
        (83, "delete", "a", None, None, '{"reason": "cleanup"}'),
    ]
    for at, kind, job, attempt, worker, data in history:
        conn.execute("INSERT INTO evq_events (at, kind, job_id, queue, job, attempt, worker,"
                     " data) VALUES (?, ?, ?, 'default', 'j', ?, ?, ?)",
                     (at, kind, job, attempt, worker, data))
    conn.execute("COMMIT")
    before = conn.execute("SELECT id, state, errors, hook_state FROM evq_jobs ORDER BY id"
                          ).fetchall()
    conn.close()
    assert before == [("b", "expired", 2, "due"), ("c", "cancelled", 0, None)]
    async with evq.Context(path, clock=evq.FakeClock()) as ctx:
        ctx.define("j", lambda p: p)
        check = replay.check(path)
        assert check.ok, (check.only_stored, check.only_rebuilt, check.refusal)
        assert [(r.id, r.state, r.errors, r.hook_state) for r in await ctx.jobs()] == before
        new = await ctx.enqueue("j", 5)
        await ctx.drain()
        assert (await ctx.get_job(new)).result == 5
    assert replay.check(path).ok
    # job a was deleted before the upgrade: its whole history is still found
    ledger = open_ledger(path)
    assert [e.kind for e in ledger.job_history("a")] == [
        "enqueue", "dequeue", "run", "success", "delete"]
    assert [e.kind for e in ledger.job_history("c")] == ["enqueue", "cancel"]


def test_newer_ledger_is_refused(tmp_path):
    conn = connection.connect(tmp_path / "l.db")
    connection.migrate(conn)
    conn.execute("UPDATE evq_meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(evq.LedgerError, match="upgrade evq"):
        connection.migrate(conn)


async def test_events_cannot_be_updated_or_deleted(ctx, db):
    ctx.define("job", lambda p: None)
    await ctx.enqueue("job")
    conn = sqlite3.connect(db)
    with pytest.raises(sqlite3.IntegrityError, match="append_only"):
        conn.execute("UPDATE evq_events SET kind = 'success'")
    with pytest.raises(sqlite3.IntegrityError, match="append_only"):
        conn.execute("DELETE FROM evq_events")
    conn.close()


async def test_positions_are_never_reused_after_a_rollback(ctx, db):
    ctx.define("job", lambda p: None)
    await ctx.enqueue("job")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    ctx.enqueue_in(conn, "job")
    conn.execute("ROLLBACK")
    conn.close()
    await ctx.enqueue("job")
    positions = [e.position for e in await ctx.events()]
    assert positions == sorted(set(positions)) and len(positions) == 2


async def test_replay_rebuilds_the_projection_and_point_in_time(ctx, clock, tmp_path):
    ctx.define("job", lambda p: None, max_attempts=2, backoff=evq.Fixed(0))
    ctx.define("bad", lambda p: 1 / 0, max_attempts=2, backoff=evq.Fixed(0))
    first = await ctx.enqueue("job")
    await ctx.enqueue("bad")
    await ctx.drain()
    assert replay.check(ctx.path).ok
    count = replay.replay_into(ctx.path, tmp_path / "early.db", upto=1)
    assert count == 1
    early = sqlite3.connect(tmp_path / "early.db")
    assert early.execute("SELECT id, state FROM evq_jobs").fetchall() == [(first, "pending")]
    early.close()


async def test_verify_finds_a_projection_edited_behind_the_ledger(ctx, db):
    ctx.define("job", lambda p: None)
    job_id = await ctx.enqueue("job")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE evq_jobs SET state = 'succeeded' WHERE id = ?", (job_id,))
    conn.commit()
    conn.close()
    result = replay.check(db)
    assert not result.ok
    assert result.only_stored[0][:2] == ("evq_jobs", job_id)


async def test_durability_power_uses_full_sync(db):
    async with evq.Context(db, durability="power") as ctx:
        ctx.define("job", lambda p: None)
        await ctx.enqueue("job")
        level = await ctx.ledger.writer.run(lambda tx: tx.one("PRAGMA synchronous")[0])
        assert level == 2  # FULL
    async with evq.Context(db) as ctx:
        level = await ctx.ledger.writer.run(lambda tx: tx.one("PRAGMA synchronous")[0])
        assert level == 1  # NORMAL


async def test_long_replays_report_progress_and_still_rebuild_exactly(ctx, tmp_path,
                                                                      monkeypatch):
    ctx.define("job", lambda p: None)
    await ctx.enqueue_many(("job", i) for i in range(10))
    await ctx.drain()
    monkeypatch.setattr(replay, "_CHUNK", 7)
    seen: list[tuple[int, int]] = []
    count = replay.replay_into(ctx.path, tmp_path / "copy.db",
                               progress=lambda done, total: seen.append((done, total)))
    total = seen[-1][1]
    assert count == total and seen[-1][0] == total
    assert [done for done, _ in seen] == sorted({done for done, _ in seen})
    assert len(seen) == -(-total // 7)
    assert replay.check(tmp_path / "copy.db").ok
