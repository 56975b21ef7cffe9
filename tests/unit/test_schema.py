"""The schema: migrations, the append-only rule, replay."""

from __future__ import annotations

import sqlite3

import pytest

import evq
from evq.ledger import connection, replay, schema


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
