"""Forgeries that hide behind archiving, done with plain sqlite3 (and evq's own code to
write well-sealed events, as a forger with evq installed would): none may pass `evq
verify`, with or without a trusted head. Archived events are checked against their file,
or reported by position as not checked (exit 4), never taken as verified."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import evq
from evq.ledger.sqlite.tx import Tx

NOT_CHECKED = 4
T0 = 1_800_000_000.0


def evq_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evq", *args], capture_output=True,
                          text=True, timeout=60)


def verify(db: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return evq_cli("verify", "--db", str(db), *extra)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Jobs A, B and C enqueued in one commit and run; B and C deleted. `head` is the
    head verify printed then."""
    db = tmp_path_factory.mktemp("forgery") / "ledger.db"
    clock = evq.FakeClock(T0)

    async def fill() -> list[str]:
        async with evq.Context(db, clock=clock) as ctx:
            ctx.define("pay", lambda p: {"paid": p})
            ids = await ctx.enqueue_many([("pay", 100), ("pay", 200), ("pay", 300)])
            await ctx.drain()
            clock.advance(10)
            await ctx.delete(ids[1])
            await ctx.delete(ids[2])
        return ids

    a, b, c = asyncio.run(fill())
    result = verify(db)
    assert result.returncode == 0, result.stdout
    return {"db": db, "a": a, "b": b, "c": c,
            "head": result.stdout.split("head: ")[1].strip()}


def copy_of(built: dict[str, Any], tmp_path: Path) -> Path:
    target = tmp_path / "copy.db"
    target.write_bytes(built["db"].read_bytes())
    return target


def tampering(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER evq_events_no_update")
    conn.execute("DROP TRIGGER evq_events_no_delete")
    return conn


def done_tampering(conn: sqlite3.Connection) -> None:
    """Put the append-only triggers back, so that only the chain can tell."""
    for name, action in (("evq_events_no_update", "UPDATE"), ("evq_events_no_delete", "DELETE")):
        conn.execute(f"CREATE TRIGGER {name} BEFORE {action} ON evq_events "
                     "BEGIN SELECT RAISE(ABORT, 'evq:append_only'); END")
    conn.close()


def positions_of(db: Path, job_id: str) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute(
            "SELECT position FROM evq_events WHERE job_id = ? ORDER BY position", (job_id,))]


def ranges(positions: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for position in positions:
        if out and out[-1][1] == position - 1:
            out[-1][1] = position
        else:
            out.append([position, position])
    return out


def append_sealed(db: Path, kind: str, data: dict[str, Any]) -> int:
    """Append one event and its seal through evq's own transaction code."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    tx = Tx(conn, T0 + 3600)
    position = tx.append(kind, data=data)
    tx.seal()
    conn.execute("COMMIT")
    conn.close()
    return position


def claim(positions: list[int], keeps: bool) -> dict[str, Any]:
    data = {"file": "made-up.jsonl.gz", "sha256": hashlib.sha256(b"x").hexdigest(),
            "events": len(positions), "jobs": 1, "before": T0,
            "positions": ranges(positions)}
    if keeps:
        data["kept"] = len(positions)
    return data


def edit_a_and_erase_b(db: Path, built: dict[str, Any]) -> list[int]:
    """The issue's forgery: A's payload edited, B's events erased (A's and B's enqueues
    share one commit)."""
    erased = positions_of(db, built["b"])
    conn = tampering(db)
    conn.execute("UPDATE evq_events SET data = json_set(data, '$.payload', 1000000) "
                 "WHERE job_id = ? AND kind = 'enqueue'", (built["a"],))
    conn.execute("DELETE FROM evq_events WHERE job_id = ?", (built["b"],))
    conn.execute("DELETE FROM evq_deleted_jobs WHERE id = ?", (built["b"],))
    done_tampering(conn)
    return erased


@pytest.mark.parametrize("anchored", [False, True], ids=["plain", "expect-head"])
@pytest.mark.parametrize("keeps", [False, True], ids=["no-kept-field", "kept-field"])
def test_an_edit_and_an_erasure_covered_by_a_made_up_archive_event_fail(
        built, tmp_path, anchored, keeps):
    db = copy_of(built, tmp_path)
    erased = edit_a_and_erase_b(db, built)
    append_sealed(db, "archive", claim(erased, keeps))
    result = verify(db, *(["--expect-head", built["head"]] if anchored else []))
    assert result.returncode == 1, result.stdout
    assert "hash chain broken at position" in result.stdout


@pytest.mark.parametrize("anchored", [False, True], ids=["plain", "expect-head"])
def test_the_same_forgery_with_the_erased_events_true_hashes_kept_fails(
        built, tmp_path, anchored):
    db = copy_of(built, tmp_path)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT position, at, kind, job_id, queue, job, attempt, worker, "
                            "data, v FROM evq_events WHERE job_id = ?", (built["b"],)
                            ).fetchall()
    erased = edit_a_and_erase_b(db, built)
    archive_at = append_sealed(db, "archive", claim(erased, True))
    from evq.ledger.sqlite import seals
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO evq_archived VALUES (?, ?, ?)",
                         [(row[0], seals.event_hash(row), archive_at) for row in rows])
    result = verify(db, *(["--expect-head", built["head"]] if anchored else []))
    assert result.returncode == 1, result.stdout
    assert "does not match events" in result.stdout  # A's commit, recomputed


def test_erasing_a_job_with_its_true_hashes_kept_is_reported_not_verified(built, tmp_path):
    """Erasing B (no edit) and keeping B's true hashes under a made-up archive event after
    the head looks like a real archive made after it: reported, and not checked."""
    db = copy_of(built, tmp_path)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT position, at, kind, job_id, queue, job, attempt, worker, "
                            "data, v FROM evq_events WHERE job_id = ?", (built["b"],)
                            ).fetchall()
    conn = tampering(db)
    conn.execute("DELETE FROM evq_events WHERE job_id = ?", (built["b"],))
    conn.execute("DELETE FROM evq_deleted_jobs WHERE id = ?", (built["b"],))
    done_tampering(conn)
    erased = [row[0] for row in rows]
    archive_at = append_sealed(db, "archive", claim(erased, True))
    from evq.ledger.sqlite import seals
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO evq_archived VALUES (?, ?, ?)",
                         [(row[0], seals.event_hash(row), archive_at) for row in rows])
    result = verify(db, "--expect-head", built["head"])
    assert result.returncode == NOT_CHECKED, result.stdout
    shown = ", ".join(f"{lo}..{hi}" if lo != hi else str(lo) for lo, hi in ranges(erased))
    assert f"the archive event at {archive_at}, after the expected head, removed positions " \
        f"{shown}" in result.stdout
    assert f"not checked: {len(erased)} archived events (positions {shown})" in result.stdout


@pytest.mark.parametrize("what", ["live", "seal", "after-itself", "twice", "no-kept-hash"])
def test_an_archive_event_claiming_what_it_could_not_have_removed_fails(
        built, tmp_path, what):
    db = copy_of(built, tmp_path)
    with sqlite3.connect(db) as conn:
        newest = conn.execute("SELECT max(position) FROM evq_events").fetchone()[0]
        first_seal = conn.execute("SELECT min(position) FROM evq_events WHERE kind = 'seal'"
                                  ).fetchone()[0]
    if what == "live":
        claimed = positions_of(db, built["a"])
    elif what == "seal":
        claimed = [first_seal]
    elif what == "after-itself":
        claimed = [newest + 5]
    elif what == "twice":
        archived = tmp_path / "real.jsonl.gz"
        done = evq_cli("archive", "--db", str(db), "--before",
                       datetime.fromtimestamp(T0 + 60, UTC).isoformat(), "--to", str(archived))
        assert done.returncode == 0, done.stderr
        claimed = positions_of(built["db"], built["b"])[:1]
    else:
        claimed = positions_of(db, built["c"])
        conn = tampering(db)
        conn.execute("DELETE FROM evq_events WHERE job_id = ?", (built["c"],))
        conn.execute("DELETE FROM evq_deleted_jobs WHERE id = ?", (built["c"],))
        done_tampering(conn)
    append_sealed(db, "archive", claim(claimed, True))
    for extra in ([], ["--expect-head", built["head"]]):
        result = verify(db, *extra)
        assert result.returncode == 1, (what, result.stdout)
        assert f"hash chain broken at position {claimed[0]}:" in result.stdout, result.stdout


def test_a_real_archive_after_the_trusted_head_is_reported_and_checked_with_its_file(
        built, tmp_path):
    db = copy_of(built, tmp_path)
    moved = positions_of(db, built["b"]) + positions_of(db, built["c"])
    archived = tmp_path / "a.jsonl.gz"
    done = evq_cli("archive", "--db", str(db), "--before",
                   datetime.fromtimestamp(T0 + 60, UTC).isoformat(), "--to", str(archived))
    assert done.returncode == 0, done.stderr
    shown = ", ".join(f"{lo}..{hi}" if lo != hi else str(lo) for lo, hi in
                      ranges(sorted(moved)))
    plain = verify(db, "--expect-head", built["head"])
    assert plain.returncode == NOT_CHECKED, plain.stdout
    assert f"removed positions {shown}, which are at or before it" in plain.stdout
    assert f"not checked: {len(moved)} archived events (positions {shown})" in plain.stdout
    full = verify(db, "--expect-head", built["head"], "--archive", str(archived))
    assert full.returncode == 0, full.stdout
    assert f"archived: {len(moved)} events checked against their archive files" in full.stdout
    assert "not checked" not in full.stdout and f"removed positions {shown}" in full.stdout


def test_an_expected_head_that_is_no_seal_of_the_ledger_is_named_as_such(built):
    stranger = hashlib.sha256(b"another ledger").hexdigest()
    result = verify(built["db"], "--expect-head", stranger)
    assert result.returncode == 1
    assert f"the expected head {stranger} is not a seal of this ledger: it was truncated or " \
        "rewritten, or the hash is from another ledger" in result.stdout
    assert "at position" not in result.stdout


@pytest.mark.parametrize("change", ["at = at + 100", "worker = 'mallory'", "job = 'pay'"])
def test_an_edited_seal_row_fails(built, tmp_path, change):
    db = copy_of(built, tmp_path)
    conn = tampering(db)
    seal = conn.execute("SELECT min(position) FROM evq_events WHERE kind = 'seal'").fetchone()[0]
    conn.execute(f"UPDATE evq_events SET {change} WHERE position = ?", (seal,))
    done_tampering(conn)
    result = verify(db)
    assert result.returncode == 1 and "hash chain broken at position" in result.stdout


def _legacy_line(row: tuple[Any, ...]) -> bytes:
    position, at, kind, job_id, queue, job, attempt, worker, data, v = row
    return (f"{position}\x1f{at!r}\x1f{kind}\x1f{job_id or ''}\x1f{queue or ''}\x1f"
            f"{job or ''}\x1f{'' if attempt is None else attempt}\x1f{worker or ''}\x1f"
            f"{data}\x1f{v}").encode()


def test_a_seal_of_the_old_scheme_after_seals_of_the_new_one_fails(built, tmp_path):
    """Seals written before schema 4 still verify (test_chain_schemes.py), but only
    before the first seal of the current scheme: a forger cannot fall back to them."""
    db = copy_of(built, tmp_path)
    conn = tampering(db)
    newest, head_data = conn.execute(
        "SELECT position, data FROM evq_events ORDER BY position DESC LIMIT 1").fetchone()
    row = (newest + 1, T0 + 3600, "resume", None, "default", None, None, None, "{}", 1)
    conn.execute("INSERT INTO evq_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    digest = hashlib.sha256(json.loads(head_data)["hash"].encode())
    digest.update(b"\n" + _legacy_line(row))
    conn.execute("INSERT INTO evq_events (position, at, kind, data) VALUES (?, ?, 'seal', ?)",
                 (newest + 2, T0 + 3600,
                  json.dumps({"first": newest + 1, "hash": digest.hexdigest()},
                             separators=(",", ":"))))
    done_tampering(conn)
    result = verify(db, "--expect-head", built["head"])
    assert result.returncode == 1
    assert f"hash chain broken at position {newest + 2}" in result.stdout


def test_new_seals_mark_their_scheme(built):
    with sqlite3.connect(built["db"]) as conn:
        versions = {row[0] for row in conn.execute(
            "SELECT DISTINCT v FROM evq_events WHERE kind = 'seal'")}
    assert versions == {2}


def test_verify_and_export_count_the_same_events(built, tmp_path):
    db = copy_of(built, tmp_path)
    for step in ("plain", "archived"):
        if step == "archived":
            assert evq_cli("archive", "--db", str(db), "--before",
                           datetime.fromtimestamp(T0 + 60, UTC).isoformat(),
                           "--to", str(tmp_path / "a.jsonl.gz")).returncode == 0
        exported = evq_cli("export", "--db", str(db), "--to", str(tmp_path / f"{step}.jsonl"))
        counted = int(exported.stderr.split("exported ")[1].split(" events")[0])
        with sqlite3.connect(db) as conn:
            assert counted == conn.execute("SELECT count(*) FROM evq_events").fetchone()[0]
        assert f"ok: {counted} events (" in verify(db).stdout


def _damage(db: Path, table: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?",
                            (table,)).fetchone()[0]
    with open(db, "r+b") as raw:
        raw.seek((root - 1) * page_size)
        raw.write(b"\xff" * 40)


@pytest.mark.parametrize("table", ["evq_events", "evq_jobs", "evq_workers"])
def test_verify_of_a_file_with_damaged_pages_says_so_and_where(built, tmp_path, table):
    db = copy_of(built, tmp_path)
    _damage(db, table)
    result = verify(db)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert "the file is damaged" in result.stdout and f"  {table}: " in result.stdout


def test_an_archive_with_kept_hashes_round_trips_through_export_and_import(built, tmp_path):
    db = copy_of(built, tmp_path)
    archived = tmp_path / "a.jsonl.gz"
    assert evq_cli("archive", "--db", str(db), "--before",
                   datetime.fromtimestamp(T0 + 60, UTC).isoformat(),
                   "--to", str(archived)).returncode == 0
    exported = tmp_path / "e.jsonl"
    assert evq_cli("export", "--db", str(db), "--to", str(exported)).returncode == 0
    imported = tmp_path / "imported.db"
    done = evq_cli("import", "--db", str(imported), str(exported))
    assert done.returncode == 0, done.stdout + done.stderr
    for extra in ([], ["--archive", str(archived)]):
        source, copy = verify(db, *extra), verify(imported, *extra)
        assert source.returncode == copy.returncode == (0 if extra else NOT_CHECKED)
        assert source.stdout == copy.stdout
    query = "SELECT * FROM evq_archived ORDER BY position"
    with sqlite3.connect(db) as a, sqlite3.connect(imported) as b:
        assert a.execute(query).fetchall() == b.execute(query).fetchall() != []
    replayed = tmp_path / "replayed.db"
    assert evq_cli("replay", "--db", str(db), "--to", str(replayed)).returncode == 0
    assert verify(replayed).stdout == verify(db).stdout


def test_an_archive_file_that_is_not_gzip_is_refused_cleanly(built, tmp_path):
    bogus = tmp_path / "bogus.jsonl.gz"
    bogus.write_text("not gzip\n")
    # Not an archive: bad input (2); no such file: not found (3).
    for extra, code in ((["--archive", str(bogus)], 2),
                        (["--archive", str(tmp_path / "missing.gz")], 3)):
        result = verify(built["db"], *extra)
        assert result.returncode == code and "Traceback" not in result.stderr, result.stderr
        assert "archive" in result.stderr

