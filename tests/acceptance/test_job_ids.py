"""Commands act on the job named: a short id matches literally (a full id, its tail, or a
unique prefix or suffix), an ambiguous one is refused with the candidates listed, and an
id no job has is "no such job" (exit 3), whatever characters it holds."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import evq
from evq import audit
from evq.ledger import open_ledger
from evq.ledger.sqlite import sql

NOT_FOUND, USAGE = 3, 2


def evq_cli(*args: str | bytes | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("EVQ_DB", None)
    return subprocess.run([sys.executable, "-m", "evq", *args], env=env,
                          capture_output=True, text=True, errors="replace", timeout=20)


def make_ledger(db: Path, jobs: int) -> list[str]:
    async def fill() -> list[str]:
        async with evq.Context(db) as ctx:
            ctx.define("work", None)
            return [await ctx.enqueue("work", number) for number in range(jobs)]

    return asyncio.run(fill())


def state(db: Path, job_id: str) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("SELECT state FROM evq_jobs WHERE id = ?", (job_id,))
                   .fetchone()[0])
    finally:
        conn.close()


@pytest.fixture(scope="module")
def lone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    db = tmp_path_factory.mktemp("lone") / "lone.db"
    (job_id,) = make_ledger(db, 1)
    return db, job_id


@pytest.mark.parametrize("command", ["cancel", "delete", "retry", "history", "tree"])
@pytest.mark.parametrize("pattern", ["%", "_", "%%", "_" * 8, "0%", "%" + "_" * 7])
def test_like_wildcards_name_no_job(lone: tuple[Path, str], command: str, pattern: str):
    db, job_id = lone
    result = evq_cli(command, pattern, "--db", db)
    assert result.returncode == NOT_FOUND, (result.stdout, result.stderr)
    assert "no such job" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert state(db, job_id) == "pending"


@pytest.mark.parametrize("weird", [
    "\U0010ffff", "a\U0010ffff", "\U0010ffff" * 3, b"\xed\xa0\x80", b"\xff", "x" * 100_000,
    "\x1b[2J", "\n", "' OR 1=1 --"])
def test_any_id_no_job_has_is_no_such_job(lone: tuple[Path, str], weird: str | bytes):
    db, _ = lone
    for command in (["history", weird], ["events", "--job", weird], ["cancel", weird]):
        result = evq_cli(*command, "--db", db)
        assert result.returncode == NOT_FOUND, (command[0], result.stderr[-500:])
        assert "no such job" in result.stderr and "Traceback" not in result.stderr
        assert result.stdout == ""
        assert "\x1b" not in result.stderr and result.stderr.count("\n") == 1


def test_lone_surrogate_and_huge_ids_through_the_library(lone: tuple[Path, str]):
    db, job_id = lone
    ledger = open_ledger(db)
    for weird in ("\ud800", "\udfff" + job_id[-8:], "y" * 100_000, "\U0010ffff"):
        with pytest.raises(evq.UnknownJob, match="no such job"):
            audit.resolve_job_id(ledger, weird)
    assert audit.resolve_job_id(ledger, job_id) == job_id
    assert audit.resolve_job_id(ledger, job_id[-8:]) == job_id
    assert audit.resolve_job_id(ledger, job_id[:4]) == job_id


def test_an_ambiguous_id_is_refused_with_its_candidates(tmp_path: Path):
    db = tmp_path / "many.db"
    ids = make_ledger(db, 14)
    # What they share: the milliseconds they were made in.
    prefix = next(ids[0][:n] for n in range(32, -1, -1)
                  if all(i.startswith(ids[0][:n]) for i in ids))
    assert prefix
    result = evq_cli("cancel", prefix, "--db", db)
    assert result.returncode == USAGE and "more than one job" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    listed = [line.split() for line in result.stderr.splitlines()[1:]]
    shown = [fields for fields in listed if fields[0] != "..."]
    assert len(shown) == 10 and all(fields[0] in ids for fields in shown)
    assert all(fields[1:] == ["work", "pending"] for fields in shown)
    assert result.stderr.rstrip().endswith("... and more")
    assert all(state(db, job_id) == "pending" for job_id in ids)
    # A literal prefix or suffix that names one job still does.
    done = evq_cli("cancel", ids[3][-8:], "--db", db)
    assert done.returncode == 0 and f"cancelled {ids[3]}" in done.stdout
    for short in (ids[3][-8:], ids[3][len(prefix):], ids[3][:-8]):
        cancelled = evq_cli("history", short, "--db", db)
        assert cancelled.stdout.startswith(f"job {ids[3]}  work"), cancelled.stderr
        assert "state=cancelled" in cancelled.stdout.splitlines()[0]


def test_a_full_id_is_found_through_indexes_only(lone: tuple[Path, str]):
    db, _ = lone
    conn = sqlite3.connect(db)
    try:
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql.JOB_ID_KNOWN,
                                               ("x",))]
    finally:
        conn.close()
    assert plan and not [step for step in plan if step.startswith("SCAN")], plan
