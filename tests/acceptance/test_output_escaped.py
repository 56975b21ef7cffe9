"""Output people read cannot be spoofed: whatever text the ledger holds (an exception
message, a reason, a payload, and in a forged ledger any name), every human-readable
line shows it escaped, so that it can neither move the cursor, clear the screen, reorder
what is shown nor start a line of its own. JSON output stays JSON."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import evq
from evq import audit

# A newline then a line that looks like an event, a carriage return, clear-screen, a
# terminal title, C1 controls (NEL, CSI), DEL, NUL, the line separator and bidi overrides.
NASTY = ("boom\n   9999  2026-01-01 00:00:00.000Z  success  FAKE#00000000\r\x1b[2J"
         "\x1b]0;owned\x07\x85\x9b31m\x7f\x00\u2028FAKE2\u2029\u202eevil\u2066x\u2069\u200f")
DANGEROUS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e"
                       "\u2066-\u2069\ud800-\udfff]")


def evq_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("EVQ_DB", None)
    return subprocess.run([sys.executable, "-m", "evq", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=20)


def assert_clean(result: subprocess.CompletedProcess[str], command: str) -> None:
    assert "Traceback" not in result.stderr, (command, result.stderr)
    for stream in (result.stdout, result.stderr):
        found = DANGEROUS.search(stream)
        assert found is None, (command, found, stream)
        for line in stream.splitlines():
            # The fake text may only appear inside a line, escaped, or as a line of a
            # traceback (which keeps its lines, each behind its "| " margin).
            assert not line.lstrip().startswith(("9999", "FAKE")), (command, line)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Jobs whose payload, error messages, tracebacks, results and reasons hold NASTY;
    then, by hand (a forged ledger), job, queue, worker, definition and durable handler
    names too."""
    db = tmp_path_factory.mktemp("nasty") / "nasty.db"

    async def fill() -> list[str]:
        async with evq.Context(db, clock=evq.FakeClock()) as ctx:
            @ctx.job(max_attempts=2, backoff=evq.Fixed(0))
            def explode(payload: str) -> None:
                raise RuntimeError(payload)

            @ctx.job()
            def echo(payload: str, job: evq.Job) -> str:
                return payload

            @ctx.job()
            def refuse(payload: str, job: evq.Job) -> None:
                job.failed(payload)

            await ctx.deploy()
            ids = [await explode.enqueue(NASTY), await echo.enqueue(NASTY),
                   await refuse.enqueue(NASTY)]
            await ctx.drain()
            ids.append(await echo.enqueue(NASTY, delay=60))
            await ctx.cancel(ids[-1], reason=NASTY)
            return ids

    ids = asyncio.run(fill())
    return db, ids


@pytest.fixture(scope="module")
def forged(ledger: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[Path, list[str]]:
    db, ids = ledger
    copy = tmp_path_factory.mktemp("forged") / "forged.db"
    source = sqlite3.connect(db)
    source.execute("VACUUM INTO ?", (str(copy),))
    source.close()
    conn = sqlite3.connect(copy)
    conn.execute("DROP TRIGGER evq_events_no_update")
    conn.execute("UPDATE evq_events SET job = ?1, queue = ?1 WHERE job IS NOT NULL",
                 (NASTY,))
    conn.execute("UPDATE evq_events SET worker = ?1 WHERE worker IS NOT NULL", (NASTY,))
    conn.execute("UPDATE evq_jobs SET name = ?1, queue = ?1, worker = ?1", (NASTY,))
    conn.execute("UPDATE evq_definitions SET name = name || ?1, queue = ?1", (NASTY,))
    conn.execute("INSERT INTO evq_cursors (name, position, holder, lease_until, updated_at) "
                 "VALUES (?1, 1, ?1, 0, 0)", (NASTY,))
    conn.commit()
    conn.close()
    return copy, ids


def human_commands(db: Path, ids: list[str]) -> list[list[str | Path]]:
    commands: list[list[str | Path]] = [
        ["events"], ["events", "--limit", "5"], ["jobs"], ["definitions"], ["subscribers"],
        ["stats"], ["verify"]]
    for job_id in ids:
        commands += [["history", job_id[-8:]], ["tree", job_id], ["tree", job_id,
                                                                  "--history"]]
    return [[*command, "--db", db] for command in commands]


def test_every_human_readable_line_escapes_what_the_ledger_holds(
        ledger: tuple[Path, list[str]]):
    db, ids = ledger
    for command in human_commands(db, ids):
        result = evq_cli(*command)
        assert result.returncode == 0, (command, result.stderr)
        assert_clean(result, " ".join(map(str, command)))
    history = evq_cli("history", ids[0], "--db", db).stdout
    assert "RuntimeError: boom\\n   9999  2026-01-01" in history  # shown, escaped
    assert "\\x1b[2J" in history and "\\u202eevil" in history
    # A traceback keeps its lines: the message's newline starts a new "| " line.
    trace = [line for line in history.splitlines() if line.startswith("        | ")]
    assert trace[0] == "        | Traceback (most recent call last):"
    assert any(line.startswith("        |    9999  2026-01-01 00:00:00.000Z  success  "
                               "FAKE#00000000\\r\\x1b[2J") for line in trace), trace


def test_a_forged_ledger_cannot_spoof_any_command(forged: tuple[Path, list[str]]):
    db, ids = forged
    for command in human_commands(db, ids):
        result = evq_cli(*command)
        assert_clean(result, " ".join(map(str, command)))
    pending = ids[-1]
    for command in (["retry", pending], ["delete", pending], ["cancel", ids[0]]):
        assert_clean(evq_cli(*command, "--db", db), command[0])


def test_json_output_stays_exact(ledger: tuple[Path, list[str]]):
    db, ids = ledger
    lines = evq_cli("history", ids[1], "--json", "--db", db).stdout.rstrip("\n").split("\n")
    events = [json.loads(line) for line in lines]
    assert events[0]["data"]["payload"] == NASTY
    assert events[-1]["data"]["result"] == NASTY


def test_printable_is_one_line_and_idempotent():
    shown = audit.printable(NASTY)
    assert "\n" not in shown and DANGEROUS.search(shown) is None
    assert audit.printable(shown) == shown
    assert audit.printable("plain text, é, 日本, emoji 👍") == "plain text, é, 日本, emoji 👍"
    assert audit.printable("a\tb\r\n\x1b") == "a\\tb\\r\\n\\x1b"
