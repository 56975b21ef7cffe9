"""Peer benchmark: procrastinate (a PostgreSQL job queue) on the same server, measured
the way tools/bench.py measures evq, so the two can be compared in one sitting.

procrastinate is not a dependency of evq: install it into a throwaway virtualenv, with
evq itself so that --evq can run tools/bench.py there too. From the repository's root:

    python3 -m venv /tmp/peers
    /tmp/peers/bin/pip install procrastinate 'psycopg[binary]' -e .
    /tmp/peers/bin/python tools/bench_peers.py [--db postgresql://postgres@127.0.0.1:5432/test]
        [-n 1500] [--drain-n 1000] [--concurrency 1,10] [--repeat 3] [--evq] [--json]

The defaults make each run take a few seconds on a small machine (procrastinate drains
a few hundred no-op jobs a second there). The user of --db must be allowed to CREATE
DATABASE.

Workloads (each on a fresh database `bench_procrastinate`, created from an autocommit
connection to --db's database, given procrastinate's own schema with
`App.schema_manager.apply_schema_async()`, and dropped after the run):
- enqueue: `task.defer_async(i=i)` one at a time, awaited in turn (jobs/s).
- drain_c<C>: `n` no-op jobs deferred beforehand (`batch_defer_async`, untimed), then one
  worker in this process, `App.run_worker_async(wait=False, concurrency=C)`, timed
  until it returns having caught up (jobs/s). The connection pool is sized to the
  concurrency (at least procrastinate's default of 4, at most 20).
With --evq, tools/bench.py --db (same server, this interpreter) runs enqueue and drain
afterwards and the ratios evq / procrastinate are printed. The median of --repeat runs
is reported. Not a test: nothing here asserts beyond each drain having run every job.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/test"
DATABASE = "bench_procrastinate"
POOL_MAX = 20  # connections a drain may hold (the server allows 100 in all, shared)
HERE = Path(__file__).resolve().parent

Result = dict[str, Any]


def _procrastinate() -> Any:
    try:
        return importlib.import_module("procrastinate")
    except ImportError:
        raise SystemExit(
            "procrastinate is not importable from this Python "
            f"({sys.executable}). It is not a dependency of evq; install it in a "
            "throwaway virtualenv and run this script with that one:\n"
            "    python3 -m venv /tmp/peers\n"
            "    /tmp/peers/bin/pip install procrastinate 'psycopg[binary]' -e .\n"
            "    /tmp/peers/bin/python tools/bench_peers.py") from None


def _on_database(url: str, database: str) -> str:
    """`url` with its path naming `database` (and no evq `schema=` parameter)."""
    parts = urlsplit(url)
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("schema="))
    return urlunsplit(parts._replace(path=f"/{database}", query=query))


class FreshDatabase:
    """`bench_procrastinate`, new for one run: created on entry, dropped on exit."""

    def __init__(self, url: str) -> None:
        self.admin = _on_database(url, urlsplit(url).path.lstrip("/") or "postgres")
        self.url = _on_database(url, DATABASE)

    def _run(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(statement)

    def __enter__(self) -> str:
        self._run(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        self._run(f"CREATE DATABASE {DATABASE}")
        return self.url

    def __exit__(self, *exc: object) -> None:
        self._run(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


def _app(url: str, pool: int) -> tuple[Any, Any]:
    """A procrastinate App on `url` with a pool of `pool` connections, and its no-op
    task."""
    procrastinate = _procrastinate()
    # It warns that an App made in __main__ cannot be found by import path; this one's
    # worker runs in this process with the task registered directly, so that is moot.
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
    connector = procrastinate.PsycopgConnector(conninfo=url, min_size=pool, max_size=pool)
    app = procrastinate.App(connector=connector)

    async def noop(i: int) -> None:
        return None

    task = app.task(name="noop")(noop)
    return app, task


async def bench_enqueue(url: str, n: int) -> Result:
    app, task = _app(url, 4)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        start = time.perf_counter()
        for i in range(n):
            await task.defer_async(i=i)
        elapsed = time.perf_counter() - start
    return {"jobs": n, "seconds": round(elapsed, 3), "jobs_per_s": round(n / elapsed)}


async def bench_drain(url: str, n: int, concurrency: int) -> Result:
    app, task = _app(url, min(max(4, concurrency + 2), POOL_MAX))
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for first in range(0, n, 1000):
            await task.batch_defer_async(*({"i": i} for i in range(first, min(n, first + 1000))))
        start = time.perf_counter()
        await app.run_worker_async(wait=False, concurrency=concurrency,
                                   install_signal_handlers=False)
        elapsed = time.perf_counter() - start
        async with app.connector.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")
            row = await cursor.fetchone()
    assert row is not None and row[0] == n, (row, n)
    return {"jobs": n, "concurrency": concurrency, "seconds": round(elapsed, 3),
            "jobs_per_s": round(n / elapsed)}


def _median(runs: list[Result]) -> Result:
    ordered = sorted(runs, key=lambda r: r["jobs_per_s"])
    return {**ordered[len(ordered) // 2], "runs": [r["jobs_per_s"] for r in runs]}


def _repeat(db: str, repeat: int, bench: Any, *args: Any) -> Result:
    runs = []
    for _ in range(repeat):
        with FreshDatabase(db) as url:
            runs.append(asyncio.run(bench(url, *args)))
    return _median(runs)


def _evq(db: str, enqueue_n: int, drain_n: int, repeat: int) -> Result:
    """evq's enqueue and drain from tools/bench.py on the same server, now."""
    figures: Result = {}
    for name, n in (("enqueue", enqueue_n), ("drain", drain_n)):
        out = subprocess.run(
            [sys.executable, str(HERE / "bench.py"), "--db", db, "--only", name, "-n", str(n),
             "--repeat", str(repeat), "--json"], check=True, capture_output=True, text=True)
        figures[name] = json.loads(out.stdout)[name]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=DEFAULT_DB,
                        help=f"a PostgreSQL URL; its database is used to create and drop "
                             f"{DATABASE} (default {DEFAULT_DB})")
    parser.add_argument("-n", type=int, default=1500, help="jobs enqueued one at a time")
    parser.add_argument("--drain-n", type=int, default=1000, help="jobs drained")
    parser.add_argument("--concurrency", default="1,10",
                        help="worker concurrencies to drain with (default 1,10)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per workload (median)")
    parser.add_argument("--evq", action="store_true",
                        help="also run evq's enqueue and drain (tools/bench.py) and print "
                             "the ratios")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    _procrastinate()  # say how to install it before anything else
    results: dict[str, Result] = {}

    def report(name: str, result: Result) -> None:
        results[name] = result
        if not args.json:
            print(f"procrastinate {name:<10} "
                  + "  ".join(f"{k}={v}" for k, v in result.items()), flush=True)

    report("enqueue", _repeat(args.db, args.repeat, bench_enqueue, args.n))
    for concurrency in (int(c) for c in args.concurrency.split(",")):
        report(f"drain_c{concurrency}",
               _repeat(args.db, args.repeat, bench_drain, args.drain_n, concurrency))
    drains = [r for name, r in results.items() if name.startswith("drain_c")]
    best_drain = max(r["jobs_per_s"] for r in drains)
    if args.evq:
        evq = _evq(args.db, args.n, args.drain_n, args.repeat)
        results["evq"] = evq
        results["ratios"] = {
            "enqueue": round(evq["enqueue"]["jobs_per_s"] / results["enqueue"]["jobs_per_s"], 2),
            "drain_vs_best": round(evq["drain"]["jobs_per_s"] / best_drain, 2)}
        if not args.json:
            for name, figure in evq.items():
                print(f"evq           {name:<10} "
                      + "  ".join(f"{k}={v}" for k, v in figure.items()), flush=True)
            print("ratios (evq / procrastinate): "
                  + "  ".join(f"{k}={v}" for k, v in results["ratios"].items()), flush=True)
    version = metadata.version("procrastinate")
    machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0],
               "procrastinate": version, "load": [round(x, 2) for x in os.getloadavg()]}
    if args.json:
        results["machine"] = machine
        print(json.dumps(results))
    else:
        print("# " + "  ".join(f"{k}={v}" for k, v in machine.items()))


if __name__ == "__main__":
    main()
