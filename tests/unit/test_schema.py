"""The schema: migrations, the append-only rule, replay."""

from __future__ import annotations

import sqlite3

import pytest

import evq
from evq import audit
from evq.ledger.sqlite import connection, replay, schema


def schema_of(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    return sorted(conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))


def test_fresh_schema_equals_migrated_one(tmp_path):
    fresh = sqlite3.connect(tmp_path / "fresh.db")
    fresh.executescript(schema.schema_sql())
    migrated = connection.connect(tmp_path / "migrated.db")
    assert connection.migrate(migrated) == 0
    assert schema_of(fresh) == schema_of(migrated)
    assert connection.schema_version(migrated) == schema.LATEST_VERSION
    assert connection.migrate(migrated) == schema.LATEST_VERSION  # idempotent


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
    conn = sqlite3.connect(path)
    assert [e.kind for e in audit.job_events(conn, "a")] == [
        "enqueue", "dequeue", "run", "success", "delete"]
    assert [e.kind for e in audit.job_events(conn, "c")] == ["enqueue", "cancel"]
    conn.close()


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
        level = await ctx.writer.run(lambda tx: tx.one("PRAGMA synchronous")[0])
        assert level == 2  # FULL
    async with evq.Context(db) as ctx:
        level = await ctx.writer.run(lambda tx: tx.one("PRAGMA synchronous")[0])
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
