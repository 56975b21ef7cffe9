"""Archiving: the events of deleted jobs leave the ledger for a compressed file, and the
hash chain stays verifiable across the cut."""

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

import evq


def evq_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evq", *args], capture_output=True,
                          text=True, timeout=60)


def build(db: Path) -> tuple[list[str], list[str], float]:
    clock = evq.FakeClock(1_800_000_000.0)

    async def fill() -> tuple[list[str], list[str]]:
        async with evq.Context(db, clock=clock) as ctx:
            ctx.define("job", lambda p: p)
            old = [await ctx.enqueue("job", i) for i in range(3)]
            await ctx.drain()
            for job_id in old:
                await ctx.delete(job_id, reason="done with it")
            clock.advance(3600)
            young = [await ctx.enqueue("job", i) for i in range(2)]
            await ctx.drain()
            await ctx.delete(young[0])
        return old, young

    old, young = asyncio.run(fill())
    return old, young, clock.now() - 60


def test_archive_moves_deleted_jobs_out_and_the_chain_still_verifies(tmp_path: Path):
    db = tmp_path / "ledger.db"
    old, young, cut = build(db)
    head_before = evq_cli("verify", "--db", str(db)).stdout.split("head: ")[1].strip()
    archive = tmp_path / "a.jsonl.gz"
    before = datetime.fromtimestamp(cut, UTC).isoformat()
    done = evq_cli("archive", "--db", str(db), "--before", before, "--to", str(archive))
    assert done.returncode == 0 and "of 3 jobs" in done.stdout, done.stderr
    moved = [json.loads(line) for line in gzip.decompress(archive.read_bytes()).splitlines()]
    assert {e["job_id"] for e in moved} == set(old)
    conn = sqlite3.connect(db)
    left = {row[0] for row in conn.execute("SELECT DISTINCT job_id FROM evq_events")}
    conn.close()
    assert not set(old) & left and set(young) <= left  # only the old, deleted ones left
    # Without the file: every seal still recomputed (from the hashes the ledger kept), the
    # archived events themselves reported by position as not checked, exit 4.
    plain = evq_cli("verify", "--db", str(db), "--expect-head", head_before)
    positions = sorted(e["position"] for e in moved)
    assert plain.returncode == 4, plain.stdout
    assert f"not checked: {len(moved)} archived events (positions {positions[0]}," in \
        plain.stdout
    full = evq_cli("verify", "--db", str(db), "--archive", str(archive))
    assert full.returncode == 0 and "not checked" not in full.stdout
    assert f"archived: {len(moved)} events checked against their archive files" in full.stdout
    assert archive.stat().st_mode & 0o777 == 0o600  # holds payloads: private
    again = evq_cli("archive", "--db", str(db), "--before", before,
                    "--to", str(tmp_path / "b.jsonl.gz"))
    assert "nothing to archive" in again.stdout and not (tmp_path / "b.jsonl.gz").exists()


def test_an_edited_archive_file_is_not_accepted(tmp_path: Path):
    db = tmp_path / "ledger.db"
    _, _, cut = build(db)
    archive = tmp_path / "a.jsonl.gz"
    before = datetime.fromtimestamp(cut, UTC).isoformat()
    assert evq_cli("archive", "--db", str(db), "--before", before,
                   "--to", str(archive)).returncode == 0
    lines = gzip.decompress(archive.read_bytes()).decode().splitlines()
    lines[0] = lines[0].replace('"enqueue"', '"enqueue" ')
    forged = tmp_path / "forged.jsonl.gz"
    forged.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    result = evq_cli("verify", "--db", str(db), "--archive", str(forged))
    assert result.returncode == 1 and "not one this ledger recorded" in result.stdout


def test_deleting_events_by_hand_is_not_an_archive(tmp_path: Path):
    db = tmp_path / "ledger.db"
    old, _, _ = build(db)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER evq_events_no_delete")
    conn.execute("DELETE FROM evq_events WHERE job_id = ?", (old[0],))
    conn.execute("CREATE TRIGGER evq_events_no_delete BEFORE DELETE ON evq_events "
                 "BEGIN SELECT RAISE(ABORT, 'evq:append_only'); END")
    conn.close()
    result = evq_cli("verify", "--db", str(db))
    assert result.returncode == 1 and "is missing" in result.stdout


def test_replay_of_archive_plus_ledger_equals_the_state(tmp_path: Path):
    db = tmp_path / "ledger.db"
    old, _, cut = build(db)
    archive = tmp_path / "a.jsonl.gz"
    before = datetime.fromtimestamp(cut, UTC).isoformat()
    evq_cli("archive", "--db", str(db), "--before", before, "--to", str(archive))
    merged = tmp_path / "merged.db"
    result = evq_cli("replay", "--db", str(db), "--to", str(merged), "--archive", str(archive))
    assert result.returncode == 0, result.stderr
    query = "SELECT * FROM evq_jobs ORDER BY id"
    a, b = sqlite3.connect(db), sqlite3.connect(merged)
    assert a.execute(query).fetchall() == b.execute(query).fetchall()
    positions = [row[0] for row in b.execute("SELECT position FROM evq_events")]
    assert positions == list(range(1, len(positions) + 1))  # every event back in place
    assert b.execute("SELECT count(*) FROM evq_events WHERE job_id = ?",
                     (old[0],)).fetchone()[0] > 0
    a.close()
    b.close()
    assert evq_cli("verify", "--db", str(merged)).returncode == 0


def test_an_archive_file_whose_event_differs_from_the_kept_hash_fails(tmp_path: Path):
    db = tmp_path / "ledger.db"
    _, _, cut = build(db)
    archive = tmp_path / "a.jsonl.gz"
    before = datetime.fromtimestamp(cut, UTC).isoformat()
    assert evq_cli("archive", "--db", str(db), "--before", before,
                   "--to", str(archive)).returncode == 0
    lines = gzip.decompress(archive.read_bytes()).decode().splitlines()
    first = json.loads(lines[0])
    first["worker"] = "mallory"
    lines[0] = json.dumps(first)
    forged = tmp_path / "forged.jsonl.gz"
    forged.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    # Make the ledger's archive event name the forged file, as a forger able to edit both
    # would: the seals (and the hash kept of that event) still give it away.
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER evq_events_no_update")
    conn.execute("UPDATE evq_events SET data = json_set(data, '$.sha256', ?) "
                 "WHERE kind = 'archive'",
                 (hashlib.sha256(forged.read_bytes()).hexdigest(),))
    conn.close()
    result = evq_cli("verify", "--db", str(db), "--archive", str(forged))
    assert result.returncode == 1
    assert f"archived event {first['position']} in {forged} does not match the hash the " \
        "ledger kept of it" in result.stdout


def test_archive_never_removes_a_file_it_did_not_make(tmp_path: Path):
    db = tmp_path / "ledger.db"
    _, _, cut = build(db)
    before = datetime.fromtimestamp(cut, UTC).isoformat()
    events = _count(db)
    # A name taken by a dangling symbolic link (someone else's): refused, left alone.
    link = tmp_path / "taken.jsonl.gz"
    link.symlink_to(tmp_path / "nowhere")
    result = evq_cli("archive", "--db", str(db), "--before", before, "--to", str(link))
    assert result.returncode == 2 and "already exists" in result.stderr, result.stderr
    assert link.is_symlink() and _count(db) == events
    # A directory that does not exist: exit 3 (not found), a clear error, no traceback.
    result = evq_cli("archive", "--db", str(db), "--before", before,
                     "--to", str(tmp_path / "no" / "a.jsonl.gz"))
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr
    assert "does not exist" in result.stderr and _count(db) == events
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.db", "ledger.db-shm",
                                                         "ledger.db-wal", "taken.jsonl.gz"]


def test_an_archive_the_ledger_refuses_leaves_no_file_behind(tmp_path: Path):
    db = tmp_path / "ledger.db"
    _, _, cut = build(db)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER evq_events_no_delete")  # the ledger was tampered with
    conn.close()
    events = _count(db)
    target = tmp_path / "a.jsonl.gz"
    result = evq_cli("archive", "--db", str(db), "--before",
                     datetime.fromtimestamp(cut, UTC).isoformat(), "--to", str(target))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "evq_events_no_delete" in result.stderr
    assert not target.exists() and _count(db) == events
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file


def _count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM evq_events").fetchone()[0])
