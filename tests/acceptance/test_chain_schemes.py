"""Ledgers sealed by evq before schema 4 (scheme 1: one hash over the events' lines) keep
verifying, alone or followed by seals of the current scheme; what they archived can only
be checked with the archive file, so without it verify says so (exit 4), never "ok"."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import evq

T0 = 1_800_000_000.0
NOT_CHECKED = 4
COLUMNS = "position, at, kind, job_id, queue, job, attempt, worker, data, v"


def evq_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evq", *args], capture_output=True,
                          text=True, timeout=60)


def verify(db: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return evq_cli("verify", "--db", str(db), *extra)


def head_of(db: Path) -> str:
    return verify(db).stdout.split("head: ")[1].strip()


def build(db: Path, clock: evq.FakeClock) -> list[str]:
    """Three jobs in one commit, run, the last two deleted."""
    async def fill() -> list[str]:
        async with evq.Context(db, clock=clock) as ctx:
            ctx.define("pay", lambda p: {"paid": p})
            ids = await ctx.enqueue_many([("pay", 100), ("pay", 200), ("pay", 300)])
            await ctx.drain()
            clock.advance(10)
            await ctx.delete(ids[1])
            await ctx.delete(ids[2])
        return ids

    return asyncio.run(fill())


def more_work(db: Path, clock: evq.FakeClock) -> None:
    async def fill() -> None:
        async with evq.Context(db, clock=clock) as ctx:
            ctx.define("pay", lambda p: {"paid": p})
            await ctx.enqueue("pay", 400)
            await ctx.drain()

    asyncio.run(fill())


def legacy_line(row: tuple[Any, ...]) -> bytes:
    position, at, kind, job_id, queue, job, attempt, worker, data, v = row
    return (f"{position}\x1f{at!r}\x1f{kind}\x1f{job_id or ''}\x1f{queue or ''}\x1f"
            f"{job or ''}\x1f{'' if attempt is None else attempt}\x1f{worker or ''}\x1f"
            f"{data}\x1f{v}").encode()


def archived_rows(files: list[Path]) -> dict[int, tuple[Any, ...]]:
    rows = {}
    for file in files:
        for line in gzip.decompress(file.read_bytes()).splitlines():
            event = json.loads(line)
            rows[event["position"]] = tuple(event[k] for k in COLUMNS.split(", "))
    return rows


def unguarded(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    for name in ("evq_events_no_update", "evq_events_no_delete", "evq_archived_no_update",
                 "evq_archived_no_delete"):
        conn.execute(f"DROP TRIGGER {name}")
    return conn


def guarded(conn: sqlite3.Connection) -> None:
    for table in ("evq_events", "evq_archived"):
        for action in ("UPDATE", "DELETE"):
            conn.execute(f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON "
                         f"{table} BEGIN SELECT RAISE(ABORT, 'evq:append_only'); END")
    conn.close()


def reseal_the_old_way(db: Path, files: list[Path] = (), keep_hashes: bool = False) -> None:
    """Make `db` what evq before schema 4 wrote: every seal of scheme 1 (v 1), and (unless
    `keep_hashes`) archives that keep no hashes. Archived events come from `files`."""
    conn = unguarded(db)
    if not keep_hashes:
        conn.execute("DELETE FROM evq_archived")
        conn.execute("UPDATE evq_events SET data = json_remove(data, '$.kept') "
                     "WHERE kind = 'archive'")
    rows = {row[0]: row for row in conn.execute(f"SELECT {COLUMNS} FROM evq_events")}
    rows.update(archived_rows(list(files)))
    previous, pending = "0" * 64, []
    for position in sorted(rows):
        row = rows[position]
        if row[2] != "seal":
            pending.append(row)
            continue
        digest = hashlib.sha256(previous.encode())
        for event in pending:
            digest.update(b"\n" + legacy_line(event))
        previous, pending = digest.hexdigest(), []
        first = json.loads(row[8])["first"]
        conn.execute("UPDATE evq_events SET data = ?, v = 1 WHERE position = ?",
                     (f'{{"first":{first},"hash":"{previous}"}}', position))
    guarded(conn)


def seal_versions(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute(
            "SELECT v FROM evq_events WHERE kind = 'seal' ORDER BY position")]


def archive(db: Path, to: Path) -> None:
    done = evq_cli("archive", "--db", str(db), "--before",
                   datetime.fromtimestamp(T0 + 60, UTC).isoformat(), "--to", str(to))
    assert done.returncode == 0, done.stderr


def test_a_ledger_sealed_the_old_way_verifies_and_goes_on_with_the_new_scheme(tmp_path):
    db, clock = tmp_path / "ledger.db", evq.FakeClock(T0)
    build(db, clock)
    reseal_the_old_way(db)
    assert set(seal_versions(db)) == {1}
    old_head = head_of(db)
    assert verify(db, "--expect-head", old_head).returncode == 0
    more_work(db, clock)
    versions = seal_versions(db)
    assert versions == sorted(versions) and set(versions) == {1, 2}
    result = verify(db, "--expect-head", old_head)
    assert result.returncode == 0, result.stdout


def test_what_an_old_evq_archived_is_checked_only_with_the_file(tmp_path):
    db, clock = tmp_path / "ledger.db", evq.FakeClock(T0)
    build(db, clock)
    file = tmp_path / "a.jsonl.gz"
    archive(db, file)
    reseal_the_old_way(db, [file])  # as if archived by evq before schema 4
    more_work(db, clock)
    plain = verify(db)
    assert plain.returncode == NOT_CHECKED, plain.stdout
    assert "not checked: the commits sealed at" in plain.stdout
    assert "sealed by an evq older than schema 4" in plain.stdout
    full = verify(db, "--archive", str(file))
    assert full.returncode == 0 and "not checked" not in full.stdout, full.stdout


def test_archiving_events_sealed_the_old_way_needs_the_file_to_check_them(tmp_path):
    db, clock = tmp_path / "ledger.db", evq.FakeClock(T0)
    build(db, clock)
    reseal_the_old_way(db)
    file = tmp_path / "a.jsonl.gz"
    archive(db, file)  # by this evq: hashes kept, but the old seals cannot use them
    plain = verify(db)
    assert plain.returncode == NOT_CHECKED and "not checked: the commits sealed at" in \
        plain.stdout, plain.stdout
    assert verify(db, "--archive", str(file)).returncode == 0


def test_a_forgery_behind_an_old_style_archive_claim_is_never_verified(tmp_path):
    """On a ledger sealed the old way, an edit and an erasure in one commit covered by a
    made-up archive event (written the old way after the trusted head) cannot be told
    from a real old archive without its file: verify reports that commit as not checked
    (exit 4), and with the file the forger would need, the edit fails."""
    db, clock = tmp_path / "ledger.db", evq.FakeClock(T0)
    a, b, _ = build(db, clock)
    reseal_the_old_way(db)
    head = head_of(db)
    conn = unguarded(db)
    erased = conn.execute(f"SELECT {COLUMNS} FROM evq_events WHERE job_id = ? "
                          "ORDER BY position", (b,)).fetchall()
    conn.execute("UPDATE evq_events SET data = json_set(data, '$.payload', 1000000) "
                 "WHERE job_id = ? AND kind = 'enqueue'", (a,))
    conn.execute("DELETE FROM evq_events WHERE job_id = ?", (b,))
    conn.execute("DELETE FROM evq_deleted_jobs WHERE id = ?", (b,))
    file = tmp_path / "made-up.jsonl.gz"
    file.write_bytes(gzip.compress(b"".join(
        json.dumps(dict(zip(COLUMNS.split(", "), row, strict=True))).encode() + b"\n"
        for row in erased)))
    newest, head_data = conn.execute(
        "SELECT position, data FROM evq_events ORDER BY position DESC LIMIT 1").fetchone()
    data = json.dumps({"file": file.name, "sha256": hashlib.sha256(file.read_bytes()
                                                                   ).hexdigest(),
                       "events": len(erased), "jobs": 1, "before": T0,
                       "positions": [[row[0], row[0]] for row in erased]})
    event = (newest + 1, T0 + 3600, "archive", None, None, None, None, None, data, 1)
    conn.execute(f"INSERT INTO evq_events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 event)
    digest = hashlib.sha256(json.loads(head_data)["hash"].encode())
    digest.update(b"\n" + legacy_line(event))
    conn.execute("INSERT INTO evq_events (position, at, kind, data) VALUES (?, ?, 'seal', ?)",
                 (newest + 2, T0 + 3600,
                  f'{{"first":{newest + 1},"hash":"{digest.hexdigest()}"}}'))
    guarded(conn)
    plain = verify(db, "--expect-head", head)
    assert plain.returncode == NOT_CHECKED, plain.stdout
    assert "not checked: the commits sealed at" in plain.stdout
    assert f"the archive event at {newest + 1}, after the expected head" in plain.stdout
    full = verify(db, "--expect-head", head, "--archive", str(file))
    assert full.returncode == 1 and "does not match events" in full.stdout, full.stdout
