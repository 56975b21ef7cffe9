"""Benchmarks on a fresh ledger each: enqueue, enqueue_many, drain, latency,
enqueue_sync, latency_cross_process, raw; and drain_procs (N worker processes).

    python tools/bench.py [-n 20000] [--json] [--only drain,latency]
    python tools/bench.py --db postgresql://postgres@127.0.0.1:5432/test [--procs 1,4]

Without --db each run gets a new SQLite file in a temporary directory. With --db each
run gets a new schema `evq_bench_<name>_<random>` on that PostgreSQL database, dropped
after the run; there `raw` is plain psycopg on the same rows (no triggers), and
drain_procs (1 and 4 processes by default) is in the default set. drain_procs runs on
SQLite too, when asked for with --only; its results are named drain_procs_<N>.

Prints a table, or with --json one JSON object. Figures depend on the machine; compare
before/after on the same one. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import evq

Result = dict[str, Any]
Location = str | Path
POSTGRES_PREFIXES = ("postgresql://", "postgres://")


class Ledgers:
    """Where each run's fresh ledger goes: a SQLite file in a temporary directory, or,
    with a PostgreSQL URL, a new schema on that server, dropped by `drop_made()`."""

    def __init__(self, tmp: Path, db: str | None = None) -> None:
        self.tmp = tmp
        self.db = db
        self.made: list[str] = []

    @property
    def postgres(self) -> bool:
        return self.db is not None

    def fresh(self, name: str) -> Location:
        if self.db is None:
            return self.tmp / f"{name}-{uuid.uuid4().hex[:6]}.db"
        schema = f"evq_bench_{name}_{uuid.uuid4().hex[:8]}"
        self.made.append(schema)
        return with_schema(self.db, schema)

    def connect(self) -> Any:
        """An autocommit psycopg connection to the server of --db (psycopg is only
        imported for PostgreSQL runs)."""
        import psycopg

        assert self.db is not None
        return psycopg.connect(without_schema(self.db), autocommit=True)

    def drop_made(self) -> None:
        if not self.made:
            return
        from psycopg import sql

        with self.connect() as conn:
            for schema in self.made:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(schema)))
        self.made.clear()

    def server(self) -> Result:
        with self.connect() as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            sync = conn.execute("SHOW synchronous_commit").fetchone()[0]
        return {"postgresql": version, "synchronous_commit": sync}


def _query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def with_schema(url: str, schema: str) -> str:
    """`url` naming `schema` (any `schema=` it had replaced)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in _query(url) if k != "schema"] + [("schema", schema)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def without_schema(url: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in _query(url) if k != "schema"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def schema_of(url: str) -> str:
    return dict(_query(url)).get("schema", "evq")


def _define(ctx: evq.Context, handler: Callable[..., Any] | None = None) -> None:
    async def noop(payload: Any) -> None:
        return None

    ctx.define("noop", handler or noop)


async def bench_enqueue(ledgers: Ledgers, n: int) -> Result:
    async with evq.Context(ledgers.fresh("enqueue")) as ctx:
        _define(ctx)
        start = time.perf_counter()
        for i in range(n):
            await ctx.enqueue("noop", {"i": i})
        elapsed = time.perf_counter() - start
    return {"jobs": n, "seconds": round(elapsed, 3), "jobs_per_s": round(n / elapsed)}


async def bench_enqueue_many(ledgers: Ledgers, n: int, batch: int = 1000) -> Result:
    async with evq.Context(ledgers.fresh("many")) as ctx:
        _define(ctx)
        start = time.perf_counter()
        for first in range(0, n, batch):
            await ctx.enqueue_many(
                ("noop", {"i": i}) for i in range(first, min(n, first + batch)))
        elapsed = time.perf_counter() - start
    return {"jobs": n, "batch": batch, "seconds": round(elapsed, 3),
            "jobs_per_s": round(n / elapsed)}


async def _fill(location: Location, n: int) -> None:
    """`n` no-op jobs, enqueued 1000 per call."""
    async with evq.Context(location) as ctx:
        _define(ctx)
        for first in range(0, n, 1000):
            await ctx.enqueue_many(("noop", {"i": i}) for i in range(first, min(n, first + 1000)))


async def bench_drain(ledgers: Ledgers, n: int, concurrency: int = 100) -> Result:
    location = ledgers.fresh("drain")
    await _fill(location, n)
    async with evq.Context(location) as ctx:
        _define(ctx)
        start = time.perf_counter()
        ran = await ctx.drain(concurrency=concurrency)
        elapsed = time.perf_counter() - start
    assert ran == n, (ran, n)
    return {"jobs": n, "concurrency": concurrency, "seconds": round(elapsed, 3),
            "jobs_per_s": round(n / elapsed)}


def bench_drain_procs(ledgers: Ledgers, n: int, procs: int, concurrency: int = 100) -> Result:
    """`procs` OS processes, each an evq worker (drain, `concurrency` at a time) on the
    same ledger, drain the same `n` pre-enqueued no-op jobs. Timed from the moment all
    processes are open and told to go until the last one has found nothing left."""
    location = ledgers.fresh(f"drain{procs}p")
    asyncio.run(_fill(location, n))
    children = [subprocess.Popen(
        [sys.executable, __file__, "--serve-drain", str(location), "--concurrency",
         str(concurrency)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(procs)]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        start = time.time()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        reports = []
        for child in children:
            assert child.stdout is not None
            reports.append(json.loads(child.stdout.readline()))
            child.wait(60)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(10)
    elapsed = max(r["end"] for r in reports) - start
    ran = [r["ran"] for r in reports]
    assert sum(ran) == n, (ran, n)
    return {"jobs": n, "procs": procs, "concurrency": concurrency,
            "seconds": round(elapsed, 3), "jobs_per_s": round(n / elapsed), "per_proc": ran}


def serve_drain(location: str, concurrency: int) -> None:
    """A process of drain_procs: open the ledger, say ready, drain on "go", report."""

    async def run() -> None:
        async with evq.Context(location) as ctx:
            _define(ctx)
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            ran = await ctx.drain(concurrency=concurrency)
            print(json.dumps({"ran": ran, "end": time.time()}), flush=True)

    asyncio.run(run())


async def bench_latency(ledgers: Ledgers, n: int, gap: float = 0.005) -> Result:
    n = min(n, 1000)
    started: dict[int, float] = {}
    done = asyncio.Event()

    async def record(payload: dict[str, int]) -> None:
        started[payload["i"]] = time.perf_counter()
        if len(started) == n:
            done.set()

    async with evq.Context(ledgers.fresh("latency")) as ctx:
        _define(ctx, record)
        worker = ctx.worker(concurrency=10)
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0.05)  # let the worker reach its idle wait
        sent: dict[int, float] = {}
        for i in range(n):
            sent[i] = time.perf_counter()
            await ctx.enqueue("noop", {"i": i})
            await asyncio.sleep(gap)
        await asyncio.wait_for(done.wait(), 30)
        worker.stop()
        await task
    return _percentiles([started[i] - sent[i] for i in range(n)], n)


def bench_enqueue_sync(ledgers: Ledgers, n: int) -> Result:
    """Single enqueues from synchronous code (no event loop), a commit each."""
    ctx = evq.Context(ledgers.fresh("sync"))
    ctx.define("noop", None)
    with ctx.sync() as producer:
        start = time.perf_counter()
        for i in range(n):
            producer.enqueue("noop", {"i": i})
        elapsed = time.perf_counter() - start
    return {"jobs": n, "seconds": round(elapsed, 3), "jobs_per_s": round(n / elapsed)}


def bench_latency_cross_process(ledgers: Ledgers, n: int, gap: float = 0.005) -> Result:
    """A worker in another process; jobs enqueued 5 ms apart from this one (sync
    producer); enqueue-to-start measured with the wall clock both processes share."""
    n = min(n, 500)
    location = ledgers.fresh("xproc")
    ctx = evq.Context(location)
    ctx.define("stamp", None)
    with ctx.sync():
        pass  # create the schema before the worker opens the ledger
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(location)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        server.stdout.readline()  # "ready"
        sent: dict[str, float] = {}
        with ctx.sync() as producer:
            for i in range(n):
                at = time.time()
                sent[producer.enqueue("stamp", {"i": i})] = at
                time.sleep(gap)
        started = _wait_results(ledgers, location, n)
    finally:
        server.terminate()
        server.wait(10)
    return _percentiles([float(started[j]) - sent[j] for j in sent], n)


def _wait_results(ledgers: Ledgers, location: Location, n: int) -> dict[str, Any]:
    """The results of the ledger's jobs (id -> result) once `n` have succeeded (or after
    60 s), read with the driver itself."""
    if ledgers.postgres:
        from psycopg import sql

        jobs = sql.SQL("{}.evq_jobs").format(sql.Identifier(schema_of(str(location))))
        count = sql.SQL("SELECT count(*) FROM {} WHERE state = 'succeeded'").format(jobs)
        results = sql.SQL("SELECT id, result FROM {}").format(jobs)
        with ledgers.connect() as pg:
            deadline = time.time() + 60
            while time.time() < deadline:
                if pg.execute(count).fetchone()[0] == n:
                    break
                time.sleep(0.05)
            return dict(pg.execute(results).fetchall())
    conn = sqlite3.connect(location)
    deadline = time.time() + 60
    while time.time() < deadline:
        done = conn.execute(
            "SELECT count(*) FROM evq_jobs WHERE state = 'succeeded'").fetchone()[0]
        if done == n:
            break
        time.sleep(0.05)
    started = dict(conn.execute("SELECT id, result FROM evq_jobs"))
    conn.close()
    return started


def serve(path: str) -> None:
    """The worker process of latency_cross_process: record when each job starts."""

    async def run() -> None:
        async with evq.Context(path) as ctx:
            ctx.define("stamp", lambda payload: time.time())
            worker = ctx.worker(concurrency=10)
            task = asyncio.create_task(worker.run(handle_signals=True))
            await asyncio.sleep(0.05)
            print("ready", flush=True)
            await task

    asyncio.run(run())


def _percentiles(samples: list[float], n: int) -> Result:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100)
    return {"jobs": n, "p50_ms": round(statistics.median(ms), 3), "p90_ms": round(q[89], 3),
            "p99_ms": round(q[98], 3), "max_ms": round(ms[-1], 3)}


def bench_raw(ledgers: Ledgers, n: int) -> Result:
    """The floor: the same rows (an enqueue event and a job row each) written with plain
    sqlite3, no triggers, 1000 per transaction; and one commit per row."""
    if ledgers.postgres:
        return bench_raw_postgres(ledgers, n)
    conn = sqlite3.connect(ledgers.fresh("raw"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE e (position INTEGER PRIMARY KEY AUTOINCREMENT, at REAL, kind TEXT,"
                 " job_id TEXT, queue TEXT, job TEXT, attempt INT, worker TEXT, data TEXT)")
    conn.execute("CREATE TABLE j (id TEXT PRIMARY KEY, queue TEXT, name TEXT, state TEXT,"
                 " run_at REAL, position INT) WITHOUT ROWID")
    rows = [(uuid.uuid4().hex, json.dumps({"payload": {"i": i}})) for i in range(n)]
    start = time.perf_counter()
    for first in range(0, n, 1000):
        conn.execute("BEGIN IMMEDIATE")
        for job_id, data in rows[first:first + 1000]:
            cur = conn.execute(
                "INSERT INTO e (at, kind, job_id, queue, job, data) VALUES "
                "(?, 'enqueue', ?, 'default', 'noop', ?)", (time.time(), job_id, data))
            conn.execute("INSERT INTO j VALUES (?, 'default', 'noop', 'pending', ?, ?)",
                         (job_id, time.time(), cur.lastrowid))
        conn.execute("COMMIT")
    batched = time.perf_counter() - start
    single_n = min(n, 5000)
    start = time.perf_counter()
    for _ in range(single_n):
        conn.execute("INSERT INTO e (at, kind, data) VALUES (?, 'x', '{}')", (time.time(),))
    single = time.perf_counter() - start
    conn.close()
    return {"jobs": n, "batched_jobs_per_s": round(n / batched),
            "commit_each_rows_per_s": round(single_n / single)}


def bench_raw_postgres(ledgers: Ledgers, n: int) -> Result:
    """The PostgreSQL floor, as `bench_raw` on SQLite: plain psycopg in a schema of its
    own, no triggers, the same rows (an event and a job row per job, two statements, one
    round trip each) 1000 jobs per transaction; and one autocommit INSERT per row (a
    round trip and a durable commit each, the floor under one-at-a-time enqueues)."""
    from psycopg import sql

    schema = schema_of(str(ledgers.fresh("raw")))
    rows = [(uuid.uuid4().hex, json.dumps({"payload": {"i": i}})) for i in range(n)]
    with ledgers.connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {0}; SET search_path TO {0}").format(
            sql.Identifier(schema)))
        conn.execute("CREATE TABLE e (position bigserial PRIMARY KEY, at double precision,"
                     " kind text, job_id text, queue text, job text, attempt int,"
                     " worker text, data text)")
        conn.execute("CREATE TABLE j (id text PRIMARY KEY, queue text, name text,"
                     " state text, run_at double precision, position bigint)")
        start = time.perf_counter()
        for first in range(0, n, 1000):
            with conn.transaction():
                for job_id, data in rows[first:first + 1000]:
                    position = conn.execute(
                        "INSERT INTO e (at, kind, job_id, queue, job, data) VALUES "
                        "(%s, 'enqueue', %s, 'default', 'noop', %s) RETURNING position",
                        (time.time(), job_id, data)).fetchone()[0]
                    conn.execute(
                        "INSERT INTO j VALUES (%s, 'default', 'noop', 'pending', %s, %s)",
                        (job_id, time.time(), position))
        batched = time.perf_counter() - start
        single_n = min(n, 5000)
        start = time.perf_counter()
        for _ in range(single_n):
            conn.execute("INSERT INTO e (at, kind, data) VALUES (%s, 'x', '{}')",
                         (time.time(),))
        single = time.perf_counter() - start
    return {"jobs": n, "batched_jobs_per_s": round(n / batched),
            "commit_each_rows_per_s": round(single_n / single)}


Workload = Callable[[Ledgers, int], Awaitable[Result]] | Callable[[Ledgers, int], Result]

WORKLOADS: dict[str, Workload] = {
    "enqueue": bench_enqueue,
    "enqueue_many": bench_enqueue_many,
    "drain": bench_drain,
    "latency": bench_latency,
    "enqueue_sync": bench_enqueue_sync,
    "latency_cross_process": bench_latency_cross_process,
    "raw": bench_raw,
}
# Run on PostgreSQL by default, on SQLite only when named in --only.
EXTRA = ("drain_procs",)


def _expand(chosen: list[str], procs: list[int]) -> dict[str, Workload]:
    """The workloads to run by result name; drain_procs becomes one per process count."""
    runs: dict[str, Workload] = {}
    for name in chosen:
        if name == "drain_procs":
            for count in procs:
                runs[f"drain_procs_{count}"] = _drain_with(count)
        elif name in WORKLOADS:
            runs[name] = WORKLOADS[name]
        else:
            raise SystemExit(f"unknown workload {name!r}: "
                             f"choose from {', '.join([*WORKLOADS, *EXTRA])}")
    return runs


def _drain_with(procs: int) -> Workload:
    def workload(ledgers: Ledgers, n: int) -> Result:
        return bench_drain_procs(ledgers, n, procs)

    return workload


def _run_once(workload: Workload, ledgers: Ledgers, n: int) -> Result:
    try:
        outcome: Any = workload(ledgers, n)
        result: Result = asyncio.run(outcome) if asyncio.iscoroutine(outcome) else outcome
    finally:
        ledgers.drop_made()
    return result


def _median(runs: list[Result]) -> Result:
    """The run in the middle by its headline figure (machines are noisy; this is robust)."""
    key = next(k for k in ("jobs_per_s", "p50_ms", "batched_jobs_per_s") if k in runs[0])
    ordered = sorted(runs, key=lambda r: r[key])
    return {**ordered[len(ordered) // 2], "runs": [r[key] for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="jobs per workload")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--only", help="comma-separated workloads to run")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per workload; the median run is reported (default 3)")
    parser.add_argument("--db", metavar="URL",
                        help="a postgresql:// URL: run on a fresh schema of that database "
                             "per run (dropped after) instead of a SQLite file")
    parser.add_argument("--procs", default="1,4",
                        help="process counts of drain_procs (default 1,4)")
    parser.add_argument("--serve", metavar="DB", help=argparse.SUPPRESS)
    parser.add_argument("--serve-drain", metavar="DB", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=100, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.serve_drain:
        serve_drain(args.serve_drain, args.concurrency)
        return
    if args.db is not None and not args.db.startswith(POSTGRES_PREFIXES):
        parser.error("--db takes a postgresql:// URL (without it, SQLite files are used)")
    procs = [int(p) for p in args.procs.split(",")]
    if args.only:
        chosen = args.only.split(",")
    else:
        chosen = list(WORKLOADS) + (list(EXTRA) if args.db else [])
    runs = _expand(chosen, procs)
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="evq-bench-") as tmp:
        ledgers = Ledgers(Path(tmp), args.db)
        if args.db and not args.json:
            server = "  ".join(f"{k}={v}" for k, v in ledgers.server().items())
            print(f"# {server}  load={_load()}", flush=True)
        for name, workload in runs.items():
            measured = [_run_once(workload, ledgers, args.n) for _ in range(args.repeat)]
            results[name] = _median(measured)
            if not args.json:
                print(f"{name:<14} " + "  ".join(f"{k}={v}" for k, v in results[name].items()),
                      flush=True)
        if args.json:
            results["machine"] = {"cpus": os.cpu_count(), "sqlite": sqlite3.sqlite_version,
                                  "python": sys.version.split()[0]}
            if args.db:
                results["machine"].update(ledgers.server(), load=_load())
            print(json.dumps(results))


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


if __name__ == "__main__":
    main()
