"""The WAL stays short: writers checkpoint once it passes its limit, flush it to disk
ahead of time, and leave it empty when they close. Nothing is lost on the way."""

from __future__ import annotations

import itertools
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import evq
from evq.ledger.sqlite import connection, replay, wal
from evq.testing import captured_logs


def _wal_bytes(db: Path) -> int:
    return wal.file_size(f"{db}-wal")


def _scalar(db: Path, query: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute(query).fetchone()[0])
    finally:
        conn.close()


def _events(db: Path) -> int:
    return _scalar(db, "SELECT count(*) FROM evq_events")


def _reader_holding_a_snapshot(db: Path) -> tuple[sqlite3.Connection, int]:
    """A connection inside a read transaction, and how many events it sees."""
    reader = connection.connect(db)
    reader.execute("BEGIN")
    return reader, int(reader.execute("SELECT count(*) FROM evq_events").fetchone()[0])


def _checkpoint_from_another_process(db: Path) -> int:
    """Run a TRUNCATE checkpoint from a separate process; its `busy` flag."""
    code = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=0.1); "
            "print(c.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone()[0])")
    out = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True,
                         text=True, check=True)
    return int(out.stdout)


async def test_closing_a_producer_or_context_leaves_a_readers_snapshot_protected(db):
    # A reader of this process holds a snapshot; a producer and a Context of this process
    # come and go. Their closing must not release SQLite's locks of the reader (POSIX
    # locks go with any descriptor of the file being closed), or another process could
    # checkpoint and truncate the WAL under it.
    ctx = evq.Context(db)
    ctx.define("job", None)
    with ctx.sync() as producer:
        producer.enqueue("job", 1)
    reader, seen = _reader_holding_a_snapshot(db)
    assert seen == 2
    with ctx.sync() as producer:
        producer.enqueue("job", 2)
    async with evq.Context(db) as other:
        other.define("job", None)
        await other.enqueue("job", 3)
    assert _checkpoint_from_another_process(db) == 1  # busy: the reader is protected
    assert reader.execute("SELECT count(*) FROM evq_events").fetchone()[0] == 2
    reader.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM evq_events").fetchone()[0] == 6
    reader.close()
    assert _checkpoint_from_another_process(db) == 0


def test_a_sync_producer_checkpoints_once_the_wal_passes_its_limit(db, monkeypatch):
    monkeypatch.setattr(wal, "CHECKPOINT_BYTES", 64 * 1024)
    ctx = evq.Context(db)
    ctx.define("job", None)
    sizes: list[int] = []
    with ctx.sync() as producer:
        for i in range(300):
            producer.enqueue("job", i)
            sizes.append(_wal_bytes(db))
    # one commit writes a few pages, and the producer looks at the WAL every LOOK_EVERY
    # commits: the WAL never holds much more than the limit, and each checkpoint leaves
    # it empty
    assert max(sizes) < 64 * 1024 + wal.LOOK_EVERY * 8 * (1024 + 24)
    assert 0 < sizes.count(0) < 300
    assert _wal_bytes(db) == 0  # closing truncates it too
    assert _events(db) == 600  # an enqueue and a seal per commit, none lost
    assert replay.check(db).ok


async def test_the_async_writer_checkpoints_once_the_wal_passes_its_limit(db, monkeypatch):
    monkeypatch.setattr(wal, "CHECKPOINT_BYTES", 64 * 1024)
    truncates: list[bool] = []
    original = wal.checkpoint

    def counted(conn: sqlite3.Connection, busy_ms: int, statement: str) -> bool:
        done = original(conn, busy_ms, statement)
        truncates.append(done and "TRUNCATE" in statement)
        return done

    monkeypatch.setattr(wal, "checkpoint", counted)
    async with evq.Context(db) as ctx:
        ctx.define("job", None)
        for _ in range(10):
            await ctx.enqueue_many([("job", i) for i in range(100)])
    assert sum(truncates) >= 3  # two or more on the way, one at close
    assert _wal_bytes(db) == 0
    assert replay.check(db).ok


def test_the_wal_is_flushed_to_disk_ahead_of_the_checkpoint(db, monkeypatch):
    monkeypatch.setattr(wal, "FLUSH_BYTES", 16 * 1024)
    synced = threading.Event()
    real_fsync = os.fsync
    wal_path = f"{db}-wal"
    handed: list[int] = []  # the WAL's size each time it went to the flusher
    real_flush_soon = wal.flush_soon

    def flush_soon(path: str) -> None:
        handed.append(_wal_bytes(db))
        real_flush_soon(path)

    def fsync(fd: int) -> None:
        real_fsync(fd)
        if os.fstat(fd).st_ino == os.stat(wal_path).st_ino:
            synced.set()

    monkeypatch.setattr(wal, "flush_soon", flush_soon)
    monkeypatch.setattr(wal.os, "fsync", fsync)
    real_flush_soon(f"{db}-no-such-wal")  # a WAL already gone is skipped
    ctx = evq.Context(db)
    ctx.define("job", None)
    with ctx.sync() as producer:
        producer.enqueue("job", 0)  # the general path: it finds the chain's head
        first = len(handed)
        for i in range(3 * wal.LOOK_EVERY):  # one-statement commits, a few KiB each
            producer.enqueue("job", i)
        assert len(handed) > first, "one-statement commits never reached the flusher"
        assert synced.wait(10), "the flusher never synced the WAL"


def test_a_checkpoint_error_other_than_busy_is_logged_and_the_commit_stands(db):
    conn = connection.connect(db)
    connection.migrate(conn)
    with captured_logs() as logs:
        assert not wal.checkpoint(conn, 1000, "PRAGMA no_such_pragma_fails(")  # syntax
    assert [e["event"] for e in logs] == ["evq.checkpoint_failed"]
    conn.close()


async def test_new_ledgers_use_small_pages_and_older_ones_keep_theirs(tmp_path, clock):
    def page_size(path: Path) -> int:
        return _scalar(path, "PRAGMA page_size")

    new = tmp_path / "new.db"
    async with evq.Context(new, clock=clock) as ctx:
        ctx.define("job", None)
        await ctx.enqueue("job", 1)
    assert page_size(new) == 1024

    old = tmp_path / "old.db"  # a file made with SQLite's default pages, already in WAL
    conn = sqlite3.connect(old)
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE app (x)")
    conn.close()
    async with evq.Context(old, clock=clock) as ctx:
        ctx.define("job", lambda payload: payload)
        await ctx.enqueue("job", 1)
        assert await ctx.drain() == 1
    assert page_size(old) == 4096
    assert replay.check(old).ok


def test_a_reader_holding_the_wal_costs_one_wait_then_one_per_retry_bytes(db, monkeypatch):
    monkeypatch.setattr(wal, "CHECKPOINT_BYTES", 64 * 1024)
    monkeypatch.setattr(wal, "RETRY_BYTES", 128 * 1024)
    monkeypatch.setattr(wal, "CHECKPOINT_BUSY_MS", 1)
    tries: list[tuple[int, bool]] = []
    original = wal.checkpoint

    def counted(conn: sqlite3.Connection, busy_ms: int, statement: str) -> bool:
        done = original(conn, busy_ms, statement)
        tries.append((_wal_bytes(db), done))
        return done

    monkeypatch.setattr(wal, "checkpoint", counted)
    ctx = evq.Context(db)
    ctx.define("job", None)
    with ctx.sync() as producer:
        producer.enqueue("job", 0)
        reader, _ = _reader_holding_a_snapshot(db)
        while _wal_bytes(db) < 400 * 1024:
            producer.enqueue_many([("job", i) for i in range(20)])
        # one try past the limit, then one per RETRY_BYTES of growth; none succeeds
        assert [done for _, done in tries] == [False] * len(tries)
        assert 2 <= len(tries) <= 3
        assert all(b - a >= 128 * 1024 for (a, _), (b, _) in itertools.pairwise(tries))
        reader.execute("COMMIT")
        reader.close()
        while not tries[-1][1]:  # the reader is gone: the next try truncates the WAL
            producer.enqueue_many([("job", i) for i in range(20)])
        assert _wal_bytes(db) == 0
    assert replay.check(db).ok
