"""Real faults on a PostgreSQL ledger for tests, done from outside the process under
test: find the server sessions a given OS process holds, end them
(`pg_terminate_backend`), hold the ledger's append lock in another transaction; and the
checks the fault tests make of the ledger afterwards (each acknowledged job succeeded
exactly once; `evq verify` passes).

A process's sessions are told apart from everyone else's (other tests, other people on
the same server) by the TCP ports it holds: the server sees them as `client_port`."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import psycopg

import evq
from evq.ledger import open_ledger
from evq.ledger.postgres import url as urls

DEADLINE = 30.0


def client_ports(pid: int) -> set[int]:
    """The local ports of the TCP sockets process `pid` holds open (Linux: its fds'
    socket inodes, looked up in /proc/<pid>/net/tcp{,6})."""
    inodes = set()
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def server_of(ledger_url: str) -> str:
    """What to connect to for a ledger URL's server (the URL without `?schema=`)."""
    return urls.parse(ledger_url).conninfo


def sessions_of(ledger_url: str, pid: int) -> list[int]:
    """The backend pids of evq's sessions (application_name 'evq') that process `pid`
    holds on the ledger's server."""
    ports = client_ports(pid)
    with psycopg.connect(server_of(ledger_url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'evq' "
            "AND client_port = ANY(%s) AND pid <> pg_backend_pid()", (list(ports),))
        return sorted(int(row[0]) for row in rows)


def terminate(ledger_url: str, backends: Iterable[int]) -> int:
    """End these server sessions (as an administrator would); how many ended."""
    with psycopg.connect(server_of(ledger_url), autocommit=True) as conn:
        ended = 0
        for backend in backends:
            row = conn.execute("SELECT pg_terminate_backend(%s)", (backend,)).fetchone()
            ended += bool(row and row[0])
        return ended


def running_on(ledger_url: str) -> dict[str, int]:
    """How many jobs each worker holds running, by the ledger (read from outside)."""
    schema = urls.parse(ledger_url).schema
    with psycopg.connect(server_of(ledger_url), autocommit=True) as conn:
        rows = conn.execute(psycopg.sql.SQL(
            "SELECT worker, count(*) FROM {}.evq_jobs WHERE state = 'running' "
            "GROUP BY worker").format(psycopg.sql.Identifier(schema)))
        return {str(worker): int(n) for worker, n in rows}


@contextlib.contextmanager
def append_lock_held(ledger_url: str) -> Iterator[None]:
    """Another session holds the ledger's append lock (the advisory lock every write
    transaction of evq takes first) in an open transaction until the block ends; then it
    rolls back, having written nothing."""
    key = urls.parse(ledger_url).lock_key
    with psycopg.connect(server_of(ledger_url)) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        try:
            yield
        finally:
            conn.rollback()


@contextlib.contextmanager
def table_locked(ledger_url: str, table: str = "evq_events") -> Iterator[None]:
    """Another session holds `LOCK TABLE <schema>.<table> IN ACCESS EXCLUSIVE MODE` (no
    one may even read it) until the block ends."""
    schema = urls.parse(ledger_url).schema
    with psycopg.connect(server_of(ledger_url)) as conn:
        conn.execute(psycopg.sql.SQL("LOCK TABLE {}.{} IN ACCESS EXCLUSIVE MODE").format(
            psycopg.sql.Identifier(schema), psycopg.sql.Identifier(table)))
        try:
            yield
        finally:
            conn.rollback()


async def until(condition: Callable[[], Any], seconds: float = DEADLINE,
                what: str = "the condition") -> Any:
    """Until `condition()` (sync or async) returns something true, which is returned;
    fails the test after `seconds`. (The state waited for is another process's, in the
    ledger: there is no in-process event to wait on.)"""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        await asyncio.sleep(0.05)


def successes_by_job(ledger_url: str) -> collections.Counter[str]:
    """How many `success` events each job has in the ledger."""
    return collections.Counter(event.job_id or "" for event in
                               open_ledger(ledger_url).read_events() if event.kind == "success")


async def assert_each_succeeded_once(ctx: evq.Context, ledger_url: str,
                                     acknowledged: Iterable[str]) -> dict[str, evq.JobRecord]:
    """Every job the ledger holds succeeded, with exactly one `success` event (none has
    two), and every acknowledged id is among them; the jobs by id."""
    jobs = {job.id: job for job in await ctx.jobs()}
    missing = sorted(set(acknowledged) - set(jobs))
    assert not missing, f"{len(missing)} acknowledged job(s) lost, e.g. {missing[:3]}"
    states = collections.Counter(job.state.value for job in jobs.values())
    assert set(states) == {"succeeded"}, f"not all jobs succeeded: {dict(states)}"
    counts = successes_by_job(ledger_url)
    twice = {job_id: n for job_id, n in counts.items() if n != 1}
    assert not twice, f"jobs with more than one success: {list(twice.items())[:5]}"
    assert set(counts) == set(jobs), "a succeeded job without its success event"
    return jobs


def cli_verify(ledger_url: str) -> subprocess.CompletedProcess[str]:
    """`evq verify --db URL`, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "evq", "verify", "--db", ledger_url],
                          capture_output=True, text=True, timeout=120)


def assert_verifies(ledger_url: str) -> None:
    """`evq verify --db URL` passes: storage, append-only rules, hash chain, replay."""
    done = cli_verify(ledger_url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok: "), done.stdout


def no_raw_driver_errors(text: str) -> list[str]:
    """Lines of a helper process's stderr that are not evq's own log lines (`evq.<logger>
    <LEVEL> evq.<event> ...`, as pg_worker.py formats them), or that show a traceback or
    a raw driver exception: what a user must never see, since evq says what happened
    with its own typed errors."""
    return [line for line in text.splitlines()
            if not line.startswith("evq.") or " evq." not in line
            or "Traceback" in line or "psycopg." in line or "psycopg_" in line]
