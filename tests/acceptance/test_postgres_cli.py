"""A PostgreSQL ledger from the user's side: every `evq` command takes its URL, `evq
migrate` is idempotent and safe from several processes at once, `evq schema --engine
postgresql` prints the SQL, one history moves between engines with `evq export | evq
import` (same events, same head hash, both verify), and enqueue commits or rolls back
with the caller's own psycopg transaction, sync and async."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from pg_server import drop_handed_out, new_place, split_place

import evq
from evq.ledger import open_ledger
from evq.ledger.postgres import schema as postgres_schema

TIMEOUT = 60


def evq_cli(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("EVQ_DB", None)
    return subprocess.run([sys.executable, "-m", "evq", *map(str, args)], env=env,
                          input=stdin, capture_output=True, text=True, timeout=TIMEOUT)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


@pytest.fixture
def pg(postgres_url: str) -> Iterator[str]:
    yield new_place()
    drop_handed_out()


@pytest.fixture
def history(tmp_path: Path) -> Path:
    """A SQLite ledger with some history: the demo's."""
    ok(subprocess.run([sys.executable, "-m", "evq", "demo"], cwd=tmp_path,
                      capture_output=True, text=True, timeout=TIMEOUT))
    return tmp_path / "evq-demo.db"


def head_hash(db: str | Path) -> str:
    check = open_ledger(db).verify()
    assert check.chain is not None and check.chain.ok and check.replay is not None
    assert check.replay.ok
    return check.chain.head


def test_the_demo_runs_on_postgresql_and_never_shows_the_password(pg: str) -> None:
    parts = urlsplit(pg)
    assert parts.username is not None  # (trust authentication takes any password)
    netloc = f"{parts.username}:demo-s3cret@{parts.hostname}:{parts.port or 5432}"
    url = urlunsplit(parts._replace(netloc=netloc))
    result = evq_cli("demo", "--db", url)
    shown = ok(result)
    assert "demo-s3cret" not in shown + result.stderr
    assert "see it again: evq events --db postgresql://" in shown
    states = {json.loads(line)["state"] for line in ok(evq_cli("jobs", "--db", url,
                                                              "--json")).splitlines()}
    assert states == {"succeeded", "expired"}
    assert ok(evq_cli("verify", "--db", url)).startswith("ok")


def test_an_import_of_nothing_makes_no_ledger(pg: str) -> None:
    result = evq_cli("import", "-", "--db", pg, stdin="")
    assert result.returncode == 2 and "no exported events" in result.stderr
    missing = evq_cli("verify", "--db", pg)
    assert missing.returncode == 3 and "evq migrate" in missing.stderr


def test_one_history_moves_between_engines_and_back(history: Path, pg: str, tmp_path: Path
                                                    ) -> None:
    exported = ok(evq_cli("export", "--db", history))
    ok(evq_cli("import", "-", "--db", pg, stdin=exported))
    assert ok(evq_cli("export", "--db", pg)) == exported  # the same events, as stored
    assert head_hash(pg) == head_hash(history)
    assert "ok" in ok(evq_cli("verify", "--db", pg)).lower()
    back = tmp_path / "back.db"
    ok(evq_cli("import", "-", "--db", back, stdin=ok(evq_cli("export", "--db", pg))))
    assert head_hash(back) == head_hash(history)
    assert open_ledger(back).find_jobs(evq.ledger.audit_records.JobFilter()) == (
        open_ledger(history).find_jobs(evq.ledger.audit_records.JobFilter()))
    # The same state on both engines, as every command shows it.
    for command in (("jobs",), ("stats",), ("definitions",), ("subscribers",)):
        assert ok(evq_cli(*command, "--db", pg)) == ok(evq_cli(*command, "--db", history))


def test_an_import_into_a_ledger_that_has_events_is_refused(history: Path, pg: str) -> None:
    exported = ok(evq_cli("export", "--db", history))
    ok(evq_cli("import", "-", "--db", pg, stdin=exported))
    again = evq_cli("import", "-", "--db", pg, stdin=exported)
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert "already holds events" in again.stderr
    assert ok(evq_cli("export", "--db", pg)) == exported


def test_every_reading_command_takes_a_postgresql_url(history: Path, pg: str) -> None:
    ok(evq_cli("import", "-", "--db", pg, stdin=ok(evq_cli("export", "--db", history))))
    job = json.loads(ok(evq_cli("jobs", "--db", pg, "--json")).splitlines()[0])["id"]
    assert job in ok(evq_cli("history", job, "--db", pg))
    assert ok(evq_cli("events", "--db", pg, "--limit", "3")).count("\n") == 3
    assert ok(evq_cli("tree", job, "--db", pg))


def test_migrate_is_idempotent_and_safe_from_several_processes_at_once(pg: str) -> None:
    env = {**os.environ}
    env.pop("EVQ_DB", None)
    racers = [subprocess.Popen([sys.executable, "-m", "evq", "migrate", "--db", pg], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(4)]
    outcomes = [(racer.wait(TIMEOUT), *racer.communicate()) for racer in racers]
    assert [code for code, _, _ in outcomes] == [0] * 4, outcomes
    said = sorted(out.strip().rsplit(" ", 3)[-3:][0] for _, out, _ in outcomes)
    latest = str(postgres_schema.LATEST_VERSION)
    assert said == ["0", latest, latest, latest]  # one made it; the others found it made
    assert ok(evq_cli("migrate", "--db", pg)).strip().endswith(
        f"schema version {latest} -> {latest}")
    assert "ok" in ok(evq_cli("verify", "--db", pg)).lower()


def test_schema_prints_the_postgresql_sql() -> None:
    text = ok(evq_cli("schema", "--engine", "postgresql"))
    assert "CREATE TABLE evq_events" in text and "plpgsql" in text
    assert ok(evq_cli("schema", "--db", "postgresql://nobody@127.0.0.1:1/x")) == text
    assert "WITHOUT ROWID" in ok(evq_cli("schema", "--engine", "sqlite"))


def test_a_missing_schema_is_a_typed_error_naming_what_to_do(pg: str) -> None:
    result = evq_cli("jobs", "--db", pg)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no evq ledger" in result.stderr and "evq migrate" in result.stderr


async def test_enqueue_in_commits_and_rolls_back_with_the_callers_async_transaction(
        pg: str) -> None:
    server, _ = split_place(pg)
    async with evq.Context(pg) as ctx:
        ctx.define("mail", lambda payload: None)
        async with await psycopg.AsyncConnection.connect(server) as conn:
            await conn.execute("CREATE TEMP TABLE orders (id int)")
            async with conn.transaction():
                await conn.execute("INSERT INTO orders VALUES (1)")
                kept = await ctx.enqueue_in_async(conn, "mail", {"order": 1})
            with pytest.raises(ZeroDivisionError):
                async with conn.transaction():
                    await conn.execute("INSERT INTO orders VALUES (2)")
                    dropped = await ctx.enqueue_in_async(conn, "mail", {"order": 2})
                    1 / 0  # noqa: B018  the caller's own failure rolls both back
            cursor = await conn.execute("SELECT id FROM orders")
            assert await cursor.fetchall() == [(1,)]
            # The caller's search_path is as it was: its own tables come first.
            cursor = await conn.execute("SELECT current_setting('search_path')")
            assert "evq_test" not in str(await cursor.fetchone())
        assert (await ctx.get_job(kept)) is not None and await ctx.get_job(dropped) is None
        with psycopg.connect(server) as sync_conn, sync_conn.transaction():
            also = ctx.enqueue_in(sync_conn, "mail", {"order": 3})
        record = await ctx.get_job(also)
        assert record is not None and record.state is evq.JobState.PENDING


async def test_enqueue_in_refuses_what_is_not_an_open_transaction_of_its_driver(
        pg: str) -> None:
    server, _ = split_place(pg)
    async with evq.Context(pg) as ctx:
        ctx.define("mail", lambda payload: None)
        async with await psycopg.AsyncConnection.connect(server, autocommit=True) as conn:
            with pytest.raises(evq.InvalidInput, match="transaction that is open"):
                await ctx.enqueue_in_async(conn, "mail", {})
        with psycopg.connect(server) as sync_conn:
            with pytest.raises(evq.InvalidInput, match=r"use ctx\.enqueue_in"):
                await ctx.enqueue_in_async(sync_conn, "mail", {})
            with pytest.raises(evq.InvalidInput, match="transaction that is open"):
                ctx.enqueue_in(sync_conn, "mail", {})
        assert await ctx.ledger.counts() == {}
