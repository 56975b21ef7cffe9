"""Editing, deleting or inserting an event by hand with plain sqlite3 (even after dropping
the append-only triggers) is detected by `evq verify`, and so is cutting off the newest
events once a seal was exported (`--expect-head`)."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import evq


def verify(db: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evq", "verify", "--db", str(db), *extra],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    db = tmp_path_factory.mktemp("tamper") / "ledger.db"

    async def fill() -> None:
        async with evq.Context(db) as ctx:
            ctx.define("ok", lambda p: {"paid": p})
            ctx.define("bad", lambda p: 1 / 0, max_attempts=2, backoff=evq.Fixed(0))
            for i in range(5):
                await ctx.enqueue("ok", i)
            await ctx.enqueue("bad", 9)
            await ctx.drain()

    asyncio.run(fill())
    result = verify(db)
    assert result.returncode == 0, result.stdout
    head = result.stdout.split("head: ")[1].strip()
    return db, head


def copy_of(ledger: tuple[Path, str], tmp_path: Path) -> sqlite3.Connection:
    target = tmp_path / "copy.db"
    target.write_bytes(ledger[0].read_bytes())
    conn = sqlite3.connect(target, isolation_level=None)
    conn.execute("DROP TRIGGER evq_events_no_update")
    conn.execute("DROP TRIGGER evq_events_no_delete")
    return conn


def position_named(output: str) -> int:
    return int(output.split("hash chain broken at position ")[1].split(":")[0])


def test_untouched_ledger_verifies_with_its_head(ledger):
    db, head = ledger
    assert verify(db, "--expect-head", head).returncode == 0


def test_dropping_the_append_only_triggers_is_reported(ledger, tmp_path):
    conn = copy_of(ledger, tmp_path)
    conn.close()
    result = verify(tmp_path / "copy.db")
    assert result.returncode == 1 and "append-only rule is off" in result.stdout


@pytest.mark.parametrize("change", [
    "UPDATE evq_events SET data = json_set(data, '$.result', 'forged') WHERE position = 7",
    "UPDATE evq_events SET worker = 'mallory' WHERE position = 7",
    "UPDATE evq_events SET at = at + 1 WHERE position = 7",
])
def test_an_edited_event_is_found(ledger, tmp_path, change):
    conn = copy_of(ledger, tmp_path)
    conn.execute(change)
    conn.execute("CREATE TRIGGER evq_events_no_update BEFORE UPDATE ON evq_events "
                 "BEGIN SELECT RAISE(ABORT, 'evq:append_only'); END")
    conn.execute("CREATE TRIGGER evq_events_no_delete BEFORE DELETE ON evq_events "
                 "BEGIN SELECT RAISE(ABORT, 'evq:append_only'); END")
    conn.close()
    result = verify(tmp_path / "copy.db")
    assert result.returncode == 1, result.stdout
    assert "hash chain broken" in result.stdout
    assert position_named(result.stdout) <= 7


def test_a_deleted_event_is_found(ledger, tmp_path):
    conn = copy_of(ledger, tmp_path)
    conn.execute("DELETE FROM evq_events WHERE position = 5")
    conn.close()
    result = verify(tmp_path / "copy.db")
    assert result.returncode == 1 and "event 5 is missing" in result.stdout


def test_an_inserted_event_is_found(ledger, tmp_path):
    conn = copy_of(ledger, tmp_path)
    last = conn.execute("SELECT max(position) FROM evq_events").fetchone()[0]
    # A kind no guard looks at, so the database itself lets it in.
    conn.execute("INSERT INTO evq_events (position, at, kind, queue, data) "
                 "VALUES (?, 0, 'resume', 'default', '{}')", (last + 1,))
    conn.close()
    result = verify(tmp_path / "copy.db")
    assert result.returncode == 1
    assert f"event {last + 1} and after are not sealed" in result.stdout


def test_cutting_off_the_newest_events_is_found_with_the_exported_head(ledger, tmp_path):
    head = ledger[1]
    conn = copy_of(ledger, tmp_path)
    # Remove the last commit whole (its events and its seal): what stays is consistent.
    seals = [row[0] for row in conn.execute(
        "SELECT position FROM evq_events WHERE kind = 'seal' ORDER BY position")]
    conn.execute("DELETE FROM evq_events WHERE position > ?", (seals[-2],))
    for name, action in (("evq_events_no_update", "UPDATE"), ("evq_events_no_delete", "DELETE")):
        conn.execute(f"CREATE TRIGGER {name} BEFORE {action} ON evq_events "
                     "BEGIN SELECT RAISE(ABORT, 'evq:append_only'); END")
    conn.close()
    # The chain itself is intact up to the cut; the exported head shows what is missing.
    anchored = verify(tmp_path / "copy.db", "--expect-head", head)
    assert anchored.returncode == 1
    assert f"the expected head {head} is not a seal of this ledger: it was truncated or " \
        "rewritten, or the hash is from another ledger" in anchored.stdout
    assert "chain broken at position" not in anchored.stdout


async def test_new_events_after_an_exported_head_still_verify(ledger, tmp_path):
    db, head = ledger
    target = tmp_path / "grown.db"
    target.write_bytes(db.read_bytes())
    async with evq.Context(target) as ctx:
        ctx.define("ok", lambda p: p)
        await ctx.enqueue("ok", 1)
        await ctx.drain()
    assert verify(target, "--expect-head", head).returncode == 0
