"""Faults on a PostgreSQL ledger, done for real: a worker process SIGKILLed mid-job, the
server restarted under running workers, the workers' sessions ended by the server
(`pg_terminate_backend`), the ledger's lock held by another session past the
connections' time limit (the context's busy_timeout, or `statement_timeout` in the
URL), and a URL's password through failures and the CLI.

Each test checks the ledger afterwards: every acknowledged job succeeded exactly once
(one `success` event, never two), and `evq verify` passes. Nothing here sleeps to wait
for something: it waits on the ledger's state or a process's output, with a deadline.
The restart test has a server of its own (`private_postgres`): the shared one is never
restarted."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers.pg_faults import (
    append_lock_held,
    assert_each_succeeded_once,
    assert_verifies,
    no_raw_driver_errors,
    server_of,
    sessions_of,
    table_locked,
    terminate,
    until,
)
from helpers.pg_proxy import proxy_to
from helpers.pg_worker import define
from pg_server import Private, drop_handed_out, new_place, with_schema
from pg_server import private_postgres as private_postgres  # the fixture

import evq
from evq import archive
from evq.ledger import open_ledger
from evq.testing import kinds_of

HELPERS = Path(__file__).parent / "helpers"
DEADLINE = 20.0


@pytest.fixture
def pg_ledger(postgres_url: str) -> Iterator[str]:
    place = new_place()
    yield place
    drop_handed_out()


@asynccontextmanager
async def worker_process(url: str, tmp_path: Path, name: str, concurrency: int = 10,
                         lease: float = 5.0, seconds: float = 0.005
                         ) -> AsyncIterator[asyncio.subprocess.Process]:
    """A pg_worker.py process serving `url`, ready; killed at the end if still running.
    Its stderr goes to tmp_path/<name>.stderr."""
    with (tmp_path / f"{name}.stderr").open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HELPERS / "pg_worker.py"), url, name, str(concurrency),
            str(lease), str(seconds), stdout=asyncio.subprocess.PIPE, stderr=stderr)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), DEADLINE)
            assert line == b"ready\n", (line, stderr_of(tmp_path, name))
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def stderr_of(tmp_path: Path, name: str) -> str:
    return (tmp_path / f"{name}.stderr").read_text(errors="replace")


async def stop_gracefully(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), DEADLINE)


async def succeeded(ctx: evq.Context) -> int:
    return (await ctx.counts()).get("succeeded", 0)


# --- 1. a worker process killed mid-job ------------------------------------------------

async def read_started(proc: asyncio.subprocess.Process, want: int) -> list[str]:
    """The helper's `started <id>` lines, until there are `want` of them."""
    assert proc.stdout is not None
    started: list[str] = []
    deadline = time.monotonic() + DEADLINE
    while len(started) < want:
        line = await asyncio.wait_for(proc.stdout.readline(), deadline - time.monotonic())
        assert line, f"the victim exited ({await proc.wait()}) after starting {started}"
        text = line.decode().strip()
        if text.startswith("started "):
            started.append(text.split(" ", 1)[1])
    return started


async def test_a_sigkilled_worker_loses_nothing_on_postgres(pg_ledger: str,
                                                           tmp_path: Path) -> None:
    jobs, lease = 5, 1.0
    async with evq.Context(pg_ledger) as producer:
        producer.define("slow", None, lease=lease, max_attempts=3)
        ids = await producer.enqueue_many([("slow", {"n": n}) for n in range(jobs)])

    # crash_worker.py: attempt 1 of each job prints `started <id>` and hangs.
    with (tmp_path / "victim.stderr").open("wb") as stderr:
        victim = await asyncio.create_subprocess_exec(
            sys.executable, str(HELPERS / "crash_worker.py"), pg_ledger, str(jobs * 2),
            str(lease), stdout=asyncio.subprocess.PIPE, stderr=stderr)
        try:
            started = await read_started(victim, jobs)
            victim.send_signal(signal.SIGKILL)
            killed_at = time.time()
            assert await asyncio.wait_for(victim.wait(), DEADLINE) == -signal.SIGKILL
        finally:
            if victim.returncode is None:
                victim.kill()
                await victim.wait()
    assert sorted(started) == sorted(ids)

    # Another process (this one) takes over once the victim's leases ran out.
    async with evq.Context(pg_ledger) as ctx:

        @ctx.job(lease=lease, max_attempts=3)
        async def slow(payload: Any, job: evq.Job) -> dict[str, Any]:
            return {"payload": payload, "attempt": job.attempt, "by": "rescuer"}

        worker = ctx.worker(name="rescuer")
        serving = asyncio.create_task(worker.run())
        try:
            await until(lambda: _all_succeeded(ctx, ids), DEADLINE, "the rescued jobs")
        finally:
            worker.stop()
            await asyncio.wait_for(serving, DEADLINE)

        await assert_each_succeeded_once(ctx, pg_ledger, ids)
        for n, job_id in enumerate(ids):
            record = await ctx.get_job(job_id)
            assert record is not None
            assert (record.attempt, record.errors) == (2, 1)
            assert record.result == {"payload": {"n": n}, "attempt": 2, "by": "rescuer"}
            assert await kinds_of(ctx, job_id) == [
                "enqueue", "dequeue", "run", "rescue", "dequeue", "run", "success"]
            _, dequeue1, _, rescue, _, _, success = await ctx.history(job_id)
            assert dequeue1.worker == "victim" and success.worker == "rescuer"
            assert rescue.data["reason"] == "lease_expired"
            assert rescue.data["holder"] == "victim"
            assert rescue.timestamp >= dequeue1.data["lease_until"]
            assert rescue.timestamp >= killed_at - 0.5
    assert_verifies(pg_ledger)


async def _all_succeeded(ctx: evq.Context, ids: list[str]) -> bool:
    for job_id in ids:
        record = await ctx.get_job(job_id)
        if record is None or record.state is not evq.JobState.SUCCEEDED:
            return False
    return True


# --- 2. the server restarted under running workers --------------------------------------

async def test_workers_ride_out_a_server_restart(private_postgres: Private,
                                                 tmp_path: Path) -> None:
    url = with_schema(private_postgres.url, "evq_restart")
    lease = 5.0
    async with evq.Context(url) as ctx:
        define(ctx, lease)
        before = await ctx.enqueue_many([("work", n) for n in range(300)])
        async with worker_process(url, tmp_path, "survivor", lease=lease,
                                  seconds=0.05) as proc:
            await until(lambda: _at_least(ctx, 50), DEADLINE, "the first successes")
            assert await succeeded(ctx) < len(before), "no job left running to restart under"
            up_since = _server_started(url)
            # Restart the server (fast: every session is ended, open transactions roll
            # back) while this process goes on enqueueing: each enqueue either returns
            # (the job is acknowledged) or raises LedgerUnavailable, nothing else.
            restart = asyncio.ensure_future(asyncio.to_thread(private_postgres.restart))
            during: list[str] = []
            refused: list[evq.LedgerUnavailable] = []
            n = 1000
            while not restart.done():
                try:
                    during.append(await asyncio.wait_for(ctx.enqueue("work", n), DEADLINE))
                except evq.LedgerUnavailable as exc:
                    refused.append(exc)
                    await asyncio.sleep(0.05)  # the pace of retries, not a wait for state
                n += 1
            await restart
            assert _server_started(url) > up_since, "the server did not restart"
            after = await ctx.enqueue_many([("work", n) for n in range(2000, 2300)])
            acknowledged = [*before, *during, *after]
            await until(lambda: _all_done(ctx), DEADLINE, "every job to succeed")
            assert proc.returncode is None, "the worker process died with the server"
            jobs = await assert_each_succeeded_once(ctx, url, acknowledged)
            # The worker process went on after the restart: it ran the jobs added after.
            assert {jobs[job_id].worker for job_id in after} == {"survivor"}
            assert await stop_gracefully(proc) == 0
    log = stderr_of(tmp_path, "survivor")
    assert no_raw_driver_errors(log) == [], log[-3000:]
    for failure in refused:
        assert "postgresql://postgres@127.0.0.1" in str(failure), str(failure)
        assert "reconnects on its own" in str(failure), str(failure)
    assert_verifies(url)


def _server_started(ledger_url: str) -> float:
    with psycopg.connect(server_of(ledger_url), autocommit=True) as conn:
        row = conn.execute("SELECT extract(epoch FROM pg_postmaster_start_time())").fetchone()
        assert row is not None
        return float(row[0])


async def _at_least(ctx: evq.Context, count: int) -> bool:
    return await succeeded(ctx) >= count


async def _all_done(ctx: evq.Context) -> bool:
    counts = await ctx.counts()
    return sum(counts.values()) > 0 and set(
        state for state, n in counts.items() if n) == {"succeeded"}


# --- 3. the worker's sessions ended by the server --------------------------------------

async def test_a_worker_goes_on_when_its_sessions_are_terminated(pg_ledger: str,
                                                                 tmp_path: Path) -> None:
    lease, total = 5.0, 1000
    async with evq.Context(pg_ledger) as ctx:
        define(ctx, lease)
        ids = await ctx.enqueue_many([("work", n) for n in range(total)])
        async with worker_process(pg_ledger, tmp_path, "cut", lease=lease,
                                  seconds=0.05) as proc:
            for round_ in range(1, 4):  # three cuts, each while jobs are running
                await until(partial(_at_least, ctx, 100 * round_), DEADLINE,
                            f"progress before cut {round_}")
                # Its writer and its commit watcher at least (after a cut, the watcher
                # connects again on its own; the reader when next needed).
                sessions = await until(lambda: _sessions(pg_ledger, proc.pid, 2), DEADLINE,
                                       f"the worker's sessions before cut {round_}")
                assert await succeeded(ctx) < total, "no job left running to cut under"
                assert terminate(pg_ledger, sessions) == len(sessions)
            await until(lambda: _all_done(ctx), DEADLINE, "every job to succeed")
            assert proc.returncode is None
            jobs = await assert_each_succeeded_once(ctx, pg_ledger, ids)
            assert {job.worker for job in jobs.values()} == {"cut"}
            # It serves new work too, on sessions of its own again.
            more = await ctx.enqueue_many([("work", n) for n in range(total, total + 50)])
            await until(lambda: _all_done(ctx), DEADLINE, "the jobs added after the cuts")
            await assert_each_succeeded_once(ctx, pg_ledger, [*ids, *more])
            assert await stop_gracefully(proc) == 0
    log = stderr_of(tmp_path, "cut")
    assert no_raw_driver_errors(log) == [], log[-3000:]
    assert_verifies(pg_ledger)


def _sessions(ledger_url: str, pid: int, at_least: int) -> list[int]:
    sessions = sessions_of(ledger_url, pid)
    return sessions if len(sessions) >= at_least else []


# --- 4. a lock held past the connections' time limits -----------------------------------

# How long evq's sessions wait for a lock another session holds: the context's
# busy_timeout (as on SQLite), or a time limit on every statement given by libpq's
# `options` in the URL (what PGOPTIONS sets), spelled both ways a user may write it.
# ("spaced" fails while evq/ledger/postgres/url.py re-encodes the query with
# urlencode(), which turns the space into '+': libpq does not decode '+', and the server
# refuses the parameter "+statement_timeout".)
LIMITS = {"busy-timeout": "",
          "statement-timeout-spaced": "&options=-c%20statement_timeout%3D500",
          "statement-timeout-joined": "&options=-cstatement_timeout%3D500"}


@pytest.mark.parametrize("holder", [append_lock_held, table_locked],
                         ids=["advisory-append-lock", "lock-table-events"])
@pytest.mark.parametrize("limit", list(LIMITS))
async def test_a_lock_held_past_the_time_limit_fails_the_enqueue_typed(
        pg_ledger: str, holder: Any, limit: str) -> None:
    url = pg_ledger + LIMITS[limit]
    ctx = evq.Context(url, busy_timeout=0.5 if limit == "busy-timeout" else 10.0)
    define(ctx, 5.0)
    try:
        await ctx.open()
    except evq.LedgerError as exc:
        raise AssertionError(f"a Context on {url} could not open: {exc}") from None
    try:
        first = await ctx.enqueue("work", 1)
        with holder(pg_ledger):
            started = time.monotonic()
            with pytest.raises(evq.LedgerLocked) as refused:
                await ctx.enqueue("work", 2)
            waited = time.monotonic() - started
        # It says what happened, that nothing was written, and what to do.
        message = str(refused.value)
        assert pg_ledger.split("?")[0] in message
        assert "nothing" in message and "written" in message
        assert "long transaction holding the ledger" in message
        if limit == "busy-timeout":
            assert "busy_timeout" in message and "Try again" in message
        else:
            assert "time limit" in message and "raise statement_timeout" in message
        assert 0.4 <= waited < 3, waited  # the limit ended the wait, once
        # Once the lock is free the same context writes again, and nothing of the refused
        # enqueue was written.
        second = await ctx.enqueue("work", 3)
        assert [job.id for job in await ctx.jobs()] == [first, second]
        assert [(await ctx.history(j))[0].data["payload"] for j in (first, second)] == [1, 3]
    finally:
        await ctx.close()
    assert_verifies(pg_ledger)


# --- 5. passwords never shown -----------------------------------------------------------

SECRET = "hunter2"


class Captured(logging.Handler):
    """Everything evq logs, as an application's handler receives it: the message, the
    structured fields, and any traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(record.getMessage())
        self.texts.append(repr(getattr(record, "evq", None)))
        if record.exc_info:
            self.texts.append("".join(traceback.format_exception(*record.exc_info)))


@pytest.fixture
def captured() -> Iterator[Captured]:
    logger = logging.getLogger("evq")
    handler, level = Captured(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def with_password(url: str, how: str) -> str:
    if how == "userinfo":
        return url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRET}@", 1)
    return f"{url}&password={SECRET}"


def dead_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def everything_about(exc: BaseException) -> str:
    """What a user could ever print of an exception: its text, repr, traceback, and the
    same of every exception chained to it."""
    texts = []
    seen: BaseException | None = exc
    while seen is not None:
        texts += [str(seen), repr(seen), *traceback.format_exception(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(texts)


@pytest.mark.parametrize("how", ["userinfo", "query"])
async def test_a_password_never_reaches_logs_errors_or_cli_output(
        pg_ledger: str, captured: Captured, how: str) -> None:
    url = with_password(pg_ledger, how)
    assert SECRET in url
    shown: list[str] = []

    # A context through a failure: its sessions are ended by the server while a worker
    # serves; the worker logs what happened, and goes on.
    async with evq.Context(url) as ctx:
        define(ctx, 5.0, lambda payload: payload)
        ids = await ctx.enqueue_many([("work", n) for n in range(20)])
        worker = ctx.worker(name="secretive")
        serving = asyncio.create_task(worker.run())
        try:
            await until(lambda: _at_least(ctx, 20), DEADLINE, "the first jobs")
            sessions = sessions_of(pg_ledger, os.getpid())
            assert len(sessions) >= 2
            terminate(pg_ledger, sessions)
            for n in range(20, 40):
                try:
                    ids.append(await ctx.enqueue("work", n))
                except evq.LedgerError as exc:
                    shown.append(everything_about(exc))
            await until(lambda: _all_done(ctx), DEADLINE, "the jobs after the cut")
        finally:
            worker.stop()
            await asyncio.wait_for(serving, DEADLINE)
        await assert_each_succeeded_once(ctx, pg_ledger, ids)
    # The cut was logged, naming the ledger by its URL with the password replaced (so
    # the check below is not vacuous).
    assert any("***" in text and ("reconnected" in text or "watch_failed" in text)
               for text in captured.texts), captured.texts[-5:]

    # A context on a port where no server listens: it cannot open, says why.
    dead = with_password(pg_ledger, how).replace(":5432/", f":{dead_port()}/")
    assert dead != url and SECRET in dead
    with pytest.raises(evq.LedgerUnavailable) as unavailable:
        async with evq.Context(dead):
            pass
    shown.append(everything_about(unavailable.value))
    assert "***" in str(unavailable.value)

    # The CLI, on the live ledger and on the dead port.
    for argv, ok in ((["jobs", "--db", url], True), (["verify", "--db", url], True),
                     (["jobs", "--db", dead], False), (["verify", "--db", dead], False),
                     (["events", "--db", dead], False)):
        done = subprocess.run([sys.executable, "-m", "evq", *argv], capture_output=True,
                              text=True, timeout=60)
        assert (done.returncode == 0) is ok, (argv[0], done.returncode, done.stderr)
        if not ok:
            assert done.stderr.startswith("evq: ") and "***" in done.stderr, done.stderr
            assert "Traceback" not in done.stderr and "psycopg." not in done.stderr
        shown += [done.stdout, done.stderr]

    leaks = [text for text in [*shown, *captured.texts] if SECRET in text]
    assert leaks == [], leaks[:3]


# --- 6. a commit's answer lost on the wire -----------------------------------------------

@pytest.mark.parametrize("landed", [True, False], ids=["ran-answer-lost", "never-arrived"])
async def test_an_enqueue_whose_answer_is_lost_lands_exactly_once(pg_ledger: str,
                                                                  landed: bool) -> None:
    # A writer whose last commits no one else followed sends the next one whole (BEGIN,
    # the lock, its events, its seal, COMMIT) in one message. Here the wire loses that
    # message, or lets the server commit it and loses the answer; either way the
    # connection is cut. The enqueue must neither fail nor land twice.
    with proxy_to(pg_ledger) as proxy:
        async with evq.Context(proxy.url(pg_ledger)) as ctx:
            define(ctx, 5.0)
            ids = [await ctx.enqueue("work", n) for n in range(3)]
            cut = proxy.arm("pg_advisory_xact_lock", "COMMIT", landed=landed)
            ids.append(await ctx.enqueue("work", 3))
            assert cut.done.is_set(), "the enqueue did not go in one message"
            ids.append(await ctx.enqueue("work", 4))
            assert sorted(job.id for job in await ctx.jobs()) == sorted(ids)
    enqueued = collections.Counter(event.job_id for event in
                                   open_ledger(pg_ledger).read_events()
                                   if event.kind == "enqueue")
    assert enqueued == {job_id: 1 for job_id in ids}
    assert_verifies(pg_ledger)


async def test_a_lost_answer_then_a_failed_reconnect_never_mixes_up_two_batches(
        pg_ledger: str) -> None:
    # The cut commit landed, but the server cannot be reached to find that out: its
    # caller gets LedgerUnavailable (it may have landed). The next enqueue, once the
    # server is back, must get its own job, not the unsettled one's.
    with proxy_to(pg_ledger) as proxy:
        async with evq.Context(proxy.url(pg_ledger)) as ctx:
            define(ctx, 5.0)
            ids = [await ctx.enqueue("work", n) for n in range(3)]
            cut = proxy.arm("pg_advisory_xact_lock", "COMMIT", landed=True, then_refuse=1)
            with pytest.raises(evq.LedgerUnavailable):
                await ctx.enqueue("work", 3)
            assert cut.done.is_set()
            after = await ctx.enqueue("work", 4)
            jobs = {job.id: job for job in await ctx.jobs()}
    assert after not in ids and after in jobs
    payloads = collections.Counter(
        event.data["payload"] for event in open_ledger(pg_ledger).read_events()
        if event.kind == "enqueue")
    assert payloads == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}  # the unsure one landed, once
    assert_verifies(pg_ledger)


async def test_a_commit_never_lands_in_the_positions_archiving_freed(
        pg_ledger: str, tmp_path: Path) -> None:
    # Archiving removes old jobs' events and leaves their positions free. A writer that
    # sends its commit in one round trip, assuming its last seal is still the newest
    # event, must not take those positions (behind newer events).
    async with evq.Context(pg_ledger) as first:
        define(first, 5.0)
        await first.enqueue("work", "a")
        await first.enqueue("work", "b")  # its commits now run ahead of the others'
        async with evq.Context(pg_ledger) as second:
            define(second, 5.0)
            gone = await second.enqueue_many([("work", n) for n in range(5)])
            for job_id in gone:
                await second.delete(job_id, "cleanup")
        moved = archive.archive(open_ledger(pg_ledger), time.time() + 1,
                                tmp_path / "old.jsonl.gz")
        assert moved.events > 0
        late = await first.enqueue("work", "c")
    events = list(open_ledger(pg_ledger).read_events())
    enqueued = next(e for e in events if e.job_id == late and e.kind == "enqueue")
    assert enqueued.position > max(e.position for e in events if e.kind == "archive")
    done = subprocess.run([sys.executable, "-m", "evq", "verify", "--db", pg_ledger,
                           "--archive", str(tmp_path / "old.jsonl.gz")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
