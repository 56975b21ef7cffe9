"""Storage failures met outside the writer thread are typed and say what to do: opening a
Context, its reads, the sync producer and enqueue_in, on real faults (a read-only file or
directory, a lock held by another process, damaged pages, a dropped table, a newer
schema, a full disk). Each leaves the ledger as it was."""

from __future__ import annotations

import shlex
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiosqlite
import pytest
from helpers.faults import (
    damage_table,
    event_count,
    make_ledger,
    make_newer,
    read_only,
    write_lock_held,
)

import evq


def producer(path: Path, busy_timeout: float = 10.0) -> evq.SyncProducer:
    ctx = evq.Context(path, busy_timeout=busy_timeout)
    ctx.define("job", None)
    return ctx.sync()


async def open_context(path: Path, busy_timeout: float = 10.0) -> None:
    ctx = evq.Context(path, busy_timeout=busy_timeout)
    async with ctx:
        pass


# --- read-only ---------------------------------------------------------------------------
def test_a_read_only_file_refuses_writes_with_a_typed_error(tmp_path: Path):
    db = tmp_path / "l.db"
    make_ledger(db)
    before = event_count(db)
    with read_only(db), producer(db) as sync, \
            pytest.raises(evq.LedgerReadOnly, match="read-only") as caught:
        sync.enqueue("job", 1)
    assert str(db) in str(caught.value)
    assert event_count(db) == before


async def test_a_read_only_directory_is_named_when_opening(tmp_path: Path):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "l.db"
    make_ledger(db)
    with read_only(folder):
        with pytest.raises(evq.LedgerReadOnly, match="writable") as caught:
            await open_context(db)
        assert str(db) in str(caught.value)
        with pytest.raises(evq.LedgerReadOnly):
            producer(db)
    assert event_count(db) == 6  # three enqueues, three seals


# --- locked ------------------------------------------------------------------------------
async def test_a_lock_held_by_another_process_past_busy_timeout(tmp_path: Path):
    db = tmp_path / "l.db"
    make_ledger(db)
    with write_lock_held(db):
        started = time.monotonic()
        with pytest.raises(evq.LedgerLocked, match=r"busy_timeout 0\.3 s") as caught:
            await open_context(db, busy_timeout=0.3)
        assert str(db) in str(caught.value)
        assert time.monotonic() - started < 5


def test_the_sync_producer_waits_busy_timeout_in_total(tmp_path: Path):
    db = tmp_path / "l.db"
    make_ledger(db)
    with producer(db, busy_timeout=1.0) as sync:
        sync.enqueue("job", "before")  # from now on, a lone enqueue is one statement
        before = event_count(db)
        with write_lock_held(db):
            for attempt in ("alone", "many"):
                started = time.monotonic()
                with pytest.raises(evq.LedgerLocked, match="lock"):
                    if attempt == "alone":
                        sync.enqueue("job", 1)
                    else:
                        sync.enqueue_many([("job", 2), ("job", 3)])
                waited = time.monotonic() - started
                assert 0.9 < waited < 1.8, (attempt, waited)  # not 10 s, not twice 1 s
        assert event_count(db) == before
        sync.enqueue("job", "after")  # the lock is gone: it works again
    assert event_count(db) == before + 2


# --- damaged -----------------------------------------------------------------------------
async def test_damaged_pages_are_named_as_damage(tmp_path: Path):
    db = tmp_path / "l.db"
    ids = make_ledger(db)
    damage_table(db, "evq_jobs")
    async with evq.Context(db) as ctx:  # opening reads the events, which are intact
        with pytest.raises(evq.LedgerCorrupt, match="damaged") as caught:
            await ctx.jobs()
        assert str(db) in str(caught.value) and "backup" in str(caught.value)
        with pytest.raises(evq.LedgerCorrupt):
            await ctx.get_job(ids[0])


def test_a_context_that_fails_to_open_lets_the_process_exit(tmp_path: Path):
    """Opening reads the head of the events: on a damaged events table that fails, and
    the connections already opened are closed (their threads would keep the process
    alive forever)."""
    db = tmp_path / "l.db"
    make_ledger(db)
    damage_table(db, "evq_events")
    script = textwrap.dedent("""
        import asyncio, sys, evq
        async def main():
            try:
                async with evq.Context(sys.argv[1]):
                    pass
            except evq.LedgerCorrupt as exc:
                print("refused:", exc)
        asyncio.run(main())
    """)
    result = subprocess.run([sys.executable, "-c", script, str(db)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused:") and "damaged" in result.stdout


# --- not a complete ledger of this evq ---------------------------------------------------
@pytest.mark.parametrize("table", ["evq_jobs", "evq_events"])
async def test_a_dropped_table_is_refused_at_open(tmp_path: Path, table: str):
    db = tmp_path / "l.db"
    make_ledger(db)
    conn = sqlite3.connect(db)
    conn.execute(f"DROP TABLE {table}")
    conn.commit()
    conn.close()
    with pytest.raises(evq.LedgerSchemaError, match=table) as caught:
        await open_context(db)
    assert str(db) in str(caught.value) and "backup" in str(caught.value)
    with pytest.raises(evq.LedgerSchemaError, match=table):
        producer(db)


async def test_a_newer_schema_is_refused_and_left_alone(tmp_path: Path):
    db = tmp_path / "l.db"
    make_ledger(db)
    make_newer(db)
    with pytest.raises(evq.LedgerSchemaError, match="newer") as caught:
        await open_context(db)
    assert str(db) in str(caught.value) and "upgrade evq" in str(caught.value)
    with pytest.raises(evq.LedgerSchemaError, match="99"):
        producer(db)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT value FROM evq_meta WHERE key = 'schema_version'"
                        ).fetchone() == ("99",)
    conn.close()


# --- full --------------------------------------------------------------------------------
_FILL = textwrap.dedent("""
    import resource, signal, sys, evq
    db, limit = sys.argv[1], int(sys.argv[2])
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    ctx = evq.Context(db)
    ctx.define("job", None)
    with ctx.sync() as sync:
        try:
            while True:
                print(sync.enqueue("job", "x" * 2000), flush=True)
        except evq.LedgerFull as exc:
            print("full:", exc, flush=True)
""")


def _fill_until_full(db: Path, prefix: list[str], limit: int = 0) -> list[str]:
    result = subprocess.run([*prefix, sys.executable, "-c", _FILL, str(db), str(limit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    *ids, last = result.stdout.splitlines()
    assert last.startswith("full: ") and "disk is full" in last and str(db) in last
    return ids


def _holds_exactly(db: Path, ids: list[str]) -> None:
    conn = sqlite3.connect(db)
    try:
        stored = [row[0] for row in conn.execute(
            "SELECT id FROM evq_jobs ORDER BY enqueue_position")]
    finally:
        conn.close()
    assert stored == ids and ids  # every enqueue that returned is there, nothing else


def test_a_file_size_limit_is_a_full_disk(tmp_path: Path):
    """RLIMIT_FSIZE (ulimit -f), SIGXFSZ ignored: the OS refuses to grow the file."""
    db = tmp_path / "l.db"
    make_ledger(db, jobs=0)
    ids = _fill_until_full(db, [], limit=db.stat().st_size + 200_000)
    _holds_exactly(db, ids)


def test_a_full_file_system_is_a_full_disk(tmp_path: Path):
    """A tiny tmpfs, mounted in a user and mount namespace of its own (ENOSPC)."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rm", "true"]).returncode != 0:
        pytest.skip("no unprivileged user and mount namespaces here")
    mount = tmp_path / "small"
    mount.mkdir()
    db = mount / "l.db"
    fill = tmp_path / "fill.py"
    fill.write_text(_FILL)
    listing = ("import sqlite3, sys; print(*(row[0] for row in sqlite3.connect(sys.argv[1])"
               ".execute('SELECT id FROM evq_jobs ORDER BY enqueue_position')), sep='\\n')")
    python = shlex.quote(sys.executable)
    script = (f"mount -t tmpfs -o size=256k tmpfs {shlex.quote(str(mount))} && "
              f"{python} {shlex.quote(str(fill))} {shlex.quote(str(db))} 0 && "
              f"{python} -c {shlex.quote(listing)} {shlex.quote(str(db))}")
    result = subprocess.run([unshare, "-rm", "sh", "-c", script], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    full = next(i for i, line in enumerate(lines) if line.startswith("full: "))
    assert "disk is full" in lines[full] and str(db) in lines[full]
    assert lines[full + 1:] == lines[:full] and lines[:full]  # what returned is there


# --- enqueue_in --------------------------------------------------------------------------
async def test_enqueue_in_on_a_file_without_the_schema_is_refused(tmp_path: Path):
    db = tmp_path / "shop.db"
    ctx = evq.Context(db)  # never opened: the file has no evq schema
    ctx.define("job", None)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.execute("INSERT INTO orders VALUES (1)")
    with pytest.raises(evq.LedgerSchemaError, match="evq migrate"):
        ctx.enqueue_in(conn, "job", {"order": 1})
    conn.commit()  # the caller's own transaction is intact
    assert conn.execute("SELECT id FROM orders").fetchall() == [(1,)]
    conn.close()


async def test_enqueue_in_refuses_a_closed_a_read_only_or_an_async_connection(
        tmp_path: Path):
    db = tmp_path / "l.db"
    make_ledger(db)
    before = event_count(db)
    ctx = evq.Context(db)
    ctx.define("job", None)
    closed = sqlite3.connect(db)
    closed.close()
    with pytest.raises(evq.InvalidInput, match="closed"):
        ctx.enqueue_in(closed, "job", 1)
    reader = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, isolation_level=None)
    reader.execute("BEGIN")
    with pytest.raises(evq.LedgerReadOnly, match="read-only"):
        ctx.enqueue_in(reader, "job", 1)
    reader.close()
    async with aiosqlite.connect(db) as conn:
        await conn.execute("BEGIN")
        with pytest.raises(evq.InvalidInput, match="aiosqlite"):
            ctx.enqueue_in(conn, "job", 1)  # type: ignore[arg-type]
    assert event_count(db) == before


async def test_enqueue_in_on_a_newer_schema_is_refused(tmp_path: Path):
    db = tmp_path / "l.db"
    make_ledger(db)
    make_newer(db)
    conn = sqlite3.connect(db)
    ctx = evq.Context(db)
    ctx.define("job", None)
    conn.execute("BEGIN")
    with pytest.raises(evq.LedgerSchemaError, match="newer"):
        ctx.enqueue_in(conn, "job", 1)
    conn.close()



async def test_enqueue_in_waits_through_another_commit_in_a_transaction_not_yet_read(
        tmp_path: Path):
    """The caller opened a deferred transaction and has read nothing yet; another
    connection commits just as enqueue_in asks for the write lock. enqueue_in must not
    have read the ledger before taking the lock (SQLite cannot turn such a stale read
    into a write), so it writes after that commit."""
    db = tmp_path / "l.db"
    make_ledger(db)
    ctx = evq.Context(db)
    ctx.define("job", None)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO orders VALUES (1)")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")

    def commit_the_other(statement: str) -> None:  # runs as each statement starts
        if other.in_transaction and "evq_meta WHERE 0" in statement:
            other.execute("COMMIT")

    conn.set_trace_callback(commit_the_other)
    before = event_count(db)
    job_id = ctx.enqueue_in(conn, "job", 1)
    conn.execute("COMMIT")
    assert not other.in_transaction
    assert event_count(db) > before
    with sqlite3.connect(db) as reader:
        assert reader.execute("SELECT count(*) FROM evq_events WHERE job_id = ?",
                              (job_id,)).fetchone()[0] == 1
    conn.close()
    other.close()
