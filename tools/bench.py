"""Benchmarks on a fresh ledger each: enqueue, enqueue_many, drain, latency,
enqueue_sync, latency_cross_process, raw.

    python tools/bench.py [-n 20000] [--json] [--only drain,latency]

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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import evq

Result = dict[str, Any]


def _fresh(tmp: Path, name: str) -> Path:
    return tmp / f"{name}-{uuid.uuid4().hex[:6]}.db"


def _define(ctx: evq.Context, handler: Callable[..., Any] | None = None) -> None:
    async def noop(payload: Any) -> None:
        return None

    ctx.define("noop", handler or noop)


async def bench_enqueue(tmp: Path, n: int) -> Result:
    async with evq.Context(_fresh(tmp, "enqueue")) as ctx:
        _define(ctx)
        start = time.perf_counter()
        for i in range(n):
            await ctx.enqueue("noop", {"i": i})
        elapsed = time.perf_counter() - start
    return {"jobs": n, "seconds": round(elapsed, 3), "jobs_per_s": round(n / elapsed)}


async def bench_enqueue_many(tmp: Path, n: int, batch: int = 1000) -> Result:
    async with evq.Context(_fresh(tmp, "many")) as ctx:
        _define(ctx)
        start = time.perf_counter()
        for first in range(0, n, batch):
            await ctx.enqueue_many(
                ("noop", {"i": i}) for i in range(first, min(n, first + batch)))
        elapsed = time.perf_counter() - start
    return {"jobs": n, "batch": batch, "seconds": round(elapsed, 3),
            "jobs_per_s": round(n / elapsed)}


async def bench_drain(tmp: Path, n: int, concurrency: int = 100) -> Result:
    path = _fresh(tmp, "drain")
    async with evq.Context(path) as ctx:
        _define(ctx)
        for first in range(0, n, 1000):
            await ctx.enqueue_many(("noop", {"i": i}) for i in range(first, min(n, first + 1000)))
    async with evq.Context(path) as ctx:
        _define(ctx)
        start = time.perf_counter()
        ran = await ctx.drain(concurrency=concurrency)
        elapsed = time.perf_counter() - start
    assert ran == n, (ran, n)
    return {"jobs": n, "concurrency": concurrency, "seconds": round(elapsed, 3),
            "jobs_per_s": round(n / elapsed)}


async def bench_latency(tmp: Path, n: int, gap: float = 0.005) -> Result:
    n = min(n, 1000)
    started: dict[int, float] = {}
    done = asyncio.Event()

    async def record(payload: dict[str, int]) -> None:
        started[payload["i"]] = time.perf_counter()
        if len(started) == n:
            done.set()

    async with evq.Context(_fresh(tmp, "latency")) as ctx:
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


def bench_enqueue_sync(tmp: Path, n: int) -> Result:
    """Single enqueues from synchronous code (no event loop), a commit each."""
    ctx = evq.Context(_fresh(tmp, "sync"))
    ctx.define("noop", None)
    with ctx.sync() as producer:
        start = time.perf_counter()
        for i in range(n):
            producer.enqueue("noop", {"i": i})
        elapsed = time.perf_counter() - start
    return {"jobs": n, "seconds": round(elapsed, 3), "jobs_per_s": round(n / elapsed)}


def bench_latency_cross_process(tmp: Path, n: int, gap: float = 0.005) -> Result:
    """A worker in another process; jobs enqueued 5 ms apart from this one (sync
    producer); enqueue-to-start measured with the wall clock both processes share."""
    n = min(n, 500)
    path = _fresh(tmp, "xproc")
    ctx = evq.Context(path)
    ctx.define("stamp", None)
    with ctx.sync():
        pass  # create the schema before the worker opens the file
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(path)],
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
        conn = sqlite3.connect(path)
        deadline = time.time() + 60
        while time.time() < deadline:
            done = conn.execute(
                "SELECT count(*) FROM evq_jobs WHERE state = 'succeeded'").fetchone()[0]
            if done == n:
                break
            time.sleep(0.05)
        started = dict(conn.execute("SELECT id, result FROM evq_jobs"))
        conn.close()
    finally:
        server.terminate()
        server.wait(10)
    return _percentiles([float(started[j]) - sent[j] for j in sent], n)


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


def bench_raw(tmp: Path, n: int) -> Result:
    """The floor: the same rows (an enqueue event and a job row each) written with plain
    sqlite3, no triggers, 1000 per transaction; and one commit per row."""
    conn = sqlite3.connect(_fresh(tmp, "raw"), isolation_level=None)
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


WORKLOADS: dict[str, Callable[[Path, int], Awaitable[Result]] | Callable[[Path, int], Result]] = {
    "enqueue": bench_enqueue,
    "enqueue_many": bench_enqueue_many,
    "drain": bench_drain,
    "latency": bench_latency,
    "enqueue_sync": bench_enqueue_sync,
    "latency_cross_process": bench_latency_cross_process,
    "raw": bench_raw,
}


def _run_once(workload: Callable[[Path, int], Any], tmp: Path, n: int) -> Result:
    outcome = workload(tmp, n)
    result: Result = asyncio.run(outcome) if asyncio.iscoroutine(outcome) else outcome
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
    parser.add_argument("--serve", metavar="DB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    chosen = args.only.split(",") if args.only else list(WORKLOADS)
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="evq-bench-") as tmp:
        for name in chosen:
            runs = [_run_once(WORKLOADS[name], Path(tmp), args.n) for _ in range(args.repeat)]
            results[name] = _median(runs)
            if not args.json:
                print(f"{name:<14} " + "  ".join(f"{k}={v}" for k, v in results[name].items()),
                      flush=True)
    if args.json:
        results["machine"] = {"cpus": os.cpu_count(), "sqlite": sqlite3.sqlite_version,
                              "python": sys.version.split()[0]}
        print(json.dumps(results))


if __name__ == "__main__":
    main()
