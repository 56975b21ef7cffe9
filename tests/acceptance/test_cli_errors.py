"""The `evq` command as scripts see it: no user-caused error prints a traceback, and the
exit codes are the documented ones (0 done, 1 check failed, 2 usage or input, or a ledger
that cannot be used as asked, 3 not found)."""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.faults import (
    damage_table,
    event_count,
    make_ledger,
    make_newer,
    read_only,
    write_lock_held,
)

EXIT_OK, EXIT_USAGE, EXIT_NOT_FOUND = 0, 2, 3


def evq(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("EVQ_DB", None)
    return subprocess.run([sys.executable, "-m", "evq", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def refused(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """The command failed with `code`, one clear line on stderr naming `words`."""
    assert result.returncode == code, (result.args, result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(("evq", "usage: evq")), result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    return result.stderr


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    db = tmp_path / "l.db"
    make_ledger(db)
    return db


def drop(db: Path, table: str) -> None:
    conn = sqlite3.connect(db)
    conn.execute(f"DROP TABLE {table}")
    conn.commit()
    conn.close()


# --- paths and files named on the command line ------------------------------------------
def test_a_db_in_a_missing_directory_is_not_found(tmp_path: Path):
    missing = tmp_path / "nowhere" / "l.db"
    for command in (["events"], ["jobs"], ["cancel", "abc"], ["migrate"], ["demo"]):
        refused(evq(*command, "--db", missing), EXIT_NOT_FOUND, str(missing.parent))
    assert not missing.parent.exists()


def test_a_directory_given_as_the_ledger_is_not_found(tmp_path: Path):
    for command in (["events"], ["jobs"], ["stats"], ["history", "abc"]):
        refused(evq(*command, "--db", tmp_path), EXIT_NOT_FOUND, "is a directory")


def test_to_in_a_missing_directory(ledger: Path, tmp_path: Path):
    missing = tmp_path / "nowhere"
    refused(evq("replay", "--db", ledger, "--to", missing / "r.db"), EXIT_NOT_FOUND,
            str(missing))
    refused(evq("export", "--db", ledger, "--to", missing / "e.jsonl"), EXIT_NOT_FOUND,
            str(missing))
    assert not missing.exists()


def test_a_missing_or_damaged_archive_file(ledger: Path, tmp_path: Path):
    refused(evq("verify", "--db", ledger, "--archive", tmp_path / "gone.gz"), EXIT_NOT_FOUND,
            "gone.gz")
    plain = tmp_path / "plain.gz"
    plain.write_text("not gzip at all")
    refused(evq("verify", "--db", ledger, "--archive", plain), EXIT_USAGE, str(plain),
            "not an evq archive")
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(b'{"position": 1}\n' * 100)[:30])
    refused(evq("replay", "--db", ledger, "--to", tmp_path / "r.db", "--archive", cut),
            EXIT_USAGE, str(cut))


def test_import_of_a_missing_file_or_of_data_that_is_not_json(ledger: Path, tmp_path: Path):
    refused(evq("import", tmp_path / "gone.jsonl", "--db", tmp_path / "new.db"),
            EXIT_NOT_FOUND, "gone.jsonl")
    lines = evq("export", "--db", ledger).stdout.splitlines()
    first = json.loads(lines[0])
    first["data"] = "{not json"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    refused(evq("import", bad, "--db", tmp_path / "new.db"), EXIT_USAGE, "line 1",
            "not JSON")
    assert not (tmp_path / "new.db").exists()


def test_worker_of_an_app_that_is_not_a_context(tmp_path: Path):
    refused(evq("worker", "json:loads", cwd=tmp_path), EXIT_USAGE, "json:loads",
            "not an evq.Context")
    (tmp_path / "broken_app.py").write_text("def make():\n    raise RuntimeError('no db')\n")
    refused(evq("worker", "broken_app:make", cwd=tmp_path), EXIT_USAGE, "RuntimeError",
            "no db")


# --- ledgers that cannot be used as asked -----------------------------------------------
@pytest.mark.parametrize("table", ["evq_jobs", "evq_events"])
def test_a_ledger_with_a_dropped_table(ledger: Path, table: str):
    drop(ledger, table)
    for command in (["events"], ["jobs"], ["stats"], ["history", "abc"], ["cancel", "abc"]):
        refused(evq(*command, "--db", ledger), EXIT_USAGE, table, "backup")


def test_a_ledger_with_damaged_pages(ledger: Path):
    damage_table(ledger, "evq_jobs")
    for command in (["jobs"], ["cancel", "abc"], ["events"]):
        result = evq(*command, "--db", ledger)
        if command == ["events"]:  # events live elsewhere in the file: still readable
            assert result.returncode == EXIT_OK, result.stderr
            continue
        refused(result, EXIT_USAGE, str(ledger), "damaged")


def test_a_ledger_of_a_newer_evq(ledger: Path):
    make_newer(ledger)
    for command in (["jobs"], ["migrate"], ["cancel", "abc"]):
        refused(evq(*command, "--db", ledger), EXIT_USAGE, "99", "upgrade evq")


def test_a_write_command_on_a_locked_ledger(tmp_path: Path):
    ledger = tmp_path / "l.db"
    job = make_ledger(ledger)[0]
    before = event_count(ledger)
    with write_lock_held(ledger):
        refused(evq("cancel", job, "--db", ledger, "--busy-timeout", "0.2"), EXIT_USAGE,
                "lock", "busy_timeout 0.2 s")
        assert evq("jobs", "--db", ledger).returncode == EXIT_OK  # reading still works
    assert event_count(ledger) == before


def test_a_write_command_on_a_read_only_ledger(tmp_path: Path):
    ledger = tmp_path / "l.db"
    job = make_ledger(ledger)[0]
    before = event_count(ledger)
    with read_only(ledger):
        refused(evq("cancel", job, "--db", ledger), EXIT_USAGE, "read-only", str(ledger))
    assert event_count(ledger) == before


def test_reading_a_ledger_in_a_read_only_directory(tmp_path: Path):
    folder = tmp_path / "backup"
    folder.mkdir()
    db = folder / "l.db"
    make_ledger(db)
    with read_only(folder):
        result = evq("jobs", "--db", db)
        assert result.returncode == EXIT_OK, result.stderr
        assert len(result.stdout.splitlines()) == 4  # the header and three jobs
        refused(evq("cancel", "abc", "--db", db), EXIT_NOT_FOUND, "no job")
        job = result.stdout.splitlines()[1].split()[0]
        refused(evq("cancel", job, "--db", db), EXIT_USAGE, "writable")


def test_an_unknown_job_is_not_found(ledger: Path):
    for command in ("history", "tree", "retry", "cancel", "delete"):
        refused(evq(command, "ffffffffeeeeeeee", "--db", ledger), EXIT_NOT_FOUND,
                "ffffffffeeeeeeee")


def test_a_driver_error_that_escapes_a_command_is_still_typed(ledger: Path, monkeypatch,
                                                             capsys):
    """The catch-all in main(): whatever sqlite3 error a command lets through is mapped
    (here a lock, raised where no command expects one)."""
    from evq import cli

    def locked(args):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(cli, "cmd_schema", locked)
    code = cli.main(["schema"])
    assert code == EXIT_USAGE
    assert capsys.readouterr().err.startswith("evq: ")


# --- refused arguments ------------------------------------------------------------------
def test_unknown_kinds_and_states_and_negative_counts_are_refused(ledger: Path, tmp_path):
    message = refused(evq("events", "--db", ledger, "--kind", "run,finish"), EXIT_USAGE,
                      "'finish'")
    assert "enqueue" in message and "seal" in message  # it names the valid kinds
    message = refused(evq("jobs", "--db", ledger, "--state", "done"), EXIT_USAGE, "'done'")
    assert "succeeded" in message
    refused(evq("events", "--db", ledger, "--limit", "-1"), EXIT_USAGE, "-1")
    refused(evq("jobs", "--db", ledger, "--limit", "-2"), EXIT_USAGE, "-2")
    refused(evq("replay", "--db", ledger, "--to", tmp_path / "r.db", "--upto", "-3"),
            EXIT_USAGE, "-3")
    assert not (tmp_path / "r.db").exists()


def test_help_says_what_evq_is_and_lists_the_exit_codes():
    result = evq("--help")
    assert result.returncode == EXIT_OK
    text = " ".join(result.stdout.split())
    assert "Look into an evq ledger, run its jobs, and look after it." in text
    for code in ("0 done", "1 a check failed", "2 bad usage or input", "3 not found",
                 "4 verified, but"):
        assert code in text, code
