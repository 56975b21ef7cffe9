"""The WAL stays short: writers checkpoint once it passes its limit, flush it to disk
ahead of time, and leave it empty when they close. Nothing is lost on the way."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import evq
from evq.ledger import connection, replay, wal


def _wal_bytes(db: Path) -> int:
    return wal.file_size(f"{db}-wal")


def _events(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM evq_events").fetchone()[0])
    finally:
        conn.close()


def test_pending_bytes_counts_the_frames_sqlite_has_not_checkpointed(db):
    conn = connection.connect(db)
    connection.migrate(conn)
    watch = wal.WalWatch(db, conn)
    for i in range(20):
        conn.execute("INSERT INTO evq_meta (key, value) VALUES (?, 'x')", (f"k{i}",))
    pending = watch.pending_bytes()
    busy, frames, backfilled = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert (busy, frames) == (0, backfilled)
    assert pending == frames * (4096 + 24)
    assert watch.pending_bytes() == 0  # all of them are in the database now
    watch.close(conn, 1000)
    conn.close()


def test_a_sync_producer_checkpoints_once_the_wal_passes_its_limit(db, monkeypatch):
    monkeypatch.setattr(wal, "CHECKPOINT_BYTES", 64 * 1024)
    ctx = evq.Context(db)
    ctx.define("job", None)
    biggest = 0
    with ctx.sync() as producer:
        for i in range(300):
            producer.enqueue("job", i)
            biggest = max(biggest, producer._wal.pending_bytes())
        # RESTART leaves the file in place for the next commits to write over
        assert _wal_bytes(db) > 0
    # one commit writes a few pages; the WAL never holds much more than the limit
    assert biggest < 64 * 1024 + 8 * (4096 + 24)
    assert _wal_bytes(db) == 0  # closing truncates it
    assert _events(db) == 600  # an enqueue and a seal per commit, none lost
    assert replay.check(db).ok


async def test_the_async_writer_checkpoints_once_the_wal_passes_its_limit(db, monkeypatch):
    monkeypatch.setattr(wal, "CHECKPOINT_BYTES", 64 * 1024)
    restarts: list[bool] = []
    original = wal.checkpoint

    def counted(conn: sqlite3.Connection, busy_ms: int, statement: str) -> bool:
        done = original(conn, busy_ms, statement)
        restarts.append(done and "RESTART" in statement)
        return done

    monkeypatch.setattr(wal, "checkpoint", counted)
    async with evq.Context(db) as ctx:
        ctx.define("job", None)
        for _ in range(10):
            await ctx.enqueue_many([("job", i) for i in range(100)])
    assert sum(restarts) >= 2
    assert _wal_bytes(db) == 0
    assert replay.check(db).ok


def test_the_wal_is_flushed_to_disk_ahead_of_the_checkpoint(db, monkeypatch):
    monkeypatch.setattr(wal, "FLUSH_BYTES", 16 * 1024)
    synced = threading.Event()
    real_fsync = os.fsync
    wal_path = f"{db}-wal"

    def fsync(fd: int) -> None:
        real_fsync(fd)
        if os.fstat(fd).st_ino == os.stat(wal_path).st_ino:
            synced.set()

    monkeypatch.setattr(wal.os, "fsync", fsync)
    wal.flush_soon(f"{db}-no-such-wal")  # a WAL already gone is skipped
    ctx = evq.Context(db)
    ctx.define("job", None)
    with ctx.sync() as producer:
        for i in range(10):
            producer.enqueue("job", i)
        assert synced.wait(10), "the WAL was never handed to the flusher"


def test_without_a_readable_wal_index_the_wal_file_size_decides(db, monkeypatch):
    # A wal-index of a format this evq does not know: fall back to the file's size, and
    # truncate it so that the size means something again.
    monkeypatch.setattr(wal, "_SHM_VERSION", 1)
    monkeypatch.setattr(wal, "CHECKPOINT_BYTES", 64 * 1024)
    ctx = evq.Context(db)
    ctx.define("job", None)
    with ctx.sync() as producer:
        sizes = []
        for i in range(300):
            producer.enqueue("job", i)
            sizes.append(_wal_bytes(db))
    assert max(sizes) < 64 * 1024 + 8 * (4096 + 24)
    assert 0 < sizes.count(0) < 300  # truncated now and then
    assert _events(db) == 600

