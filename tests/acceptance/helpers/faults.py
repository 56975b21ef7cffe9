"""Real storage faults for tests: a read-only file or directory, a write lock held by
another process, damaged pages, and a ledger to put them on.

Read-only, for real even as root (who ignores permission bits): as root the kernel's
immutable attribute (`chattr +i`), which refuses every write open to every process; as
anyone else, plain permission bits. Skips the test where neither works."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import evq


def make_ledger(path: Path, jobs: int = 3) -> list[str]:
    """A closed ledger with `jobs` pending jobs of job "job"; returns their ids. (Through
    a sync producer: tests that run in an event loop use it too.)"""
    ctx = evq.Context(path)
    ctx.define("job", None)
    with ctx.sync() as sync:
        return [sync.enqueue("job", {"n": n}) for n in range(jobs)]


def event_count(path: Path) -> int:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM evq_events").fetchone()[0])
    finally:
        conn.close()


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[str]:
    """`path` (a file or a directory) read-only for every process of this test; yields
    how it was done."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield "chmod"
        finally:
            path.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)],
                                        capture_output=True).returncode != 0:
        pytest.skip("running as root, and chattr +i is not available here")
    try:
        yield "chattr +i"
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


_HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT OR REPLACE INTO evq_meta (key, value) VALUES ('held', 'yes')")
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
conn.execute("ROLLBACK")
"""


@contextlib.contextmanager
def write_lock_held(path: Path) -> Iterator[None]:
    """Another process holds the ledger's write lock (an open BEGIN IMMEDIATE that has
    written) until the block ends; it then rolls back, writing nothing."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


def damage_table(path: Path, table: str) -> None:
    """Overwrite the root page of `table` with garbage (the rest of the file intact)."""
    conn = sqlite3.connect(path)
    try:
        root, = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?",
                             (table,)).fetchone()
        page_size, = conn.execute("PRAGMA page_size").fetchone()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    with open(path, "r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(b"\xde\xad\xbe\xef" * (page_size // 4))


def make_newer(path: Path) -> None:
    """Stamp the ledger with a schema version no evq knows yet (a newer evq wrote it)."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE evq_meta SET value = '99' WHERE key = 'schema_version'")
