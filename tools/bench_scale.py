"""The audit side at scale: build a big SQLite ledger once, then time each reading
command on it with its peak memory.

    python tools/bench_scale.py [--events 5000000] [--ledger PATH] [--json]

The ledger (default `/tmp/evq-scale-<events>.db`, kept between runs: building 5M events
takes a few minutes) holds no-op jobs enqueued 1,000 at a time and drained by a worker,
on a fake clock that moves `--step` seconds per round, so the history spans hours (the
last hour, which `stats` is timed on, holds 1/21 of it by default). Ten failed jobs,
then `--pending` jobs (default 1,000) left waiting, end it. Each command then runs as
the user would run it, in its own process (`python -m evq ...`), timed from start to
exit, with the process's peak resident memory (its own `ru_maxrss`). Commands that
write (`replay`) write to a temporary directory. Not a test: it prints figures to
watch and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import evq

EVENTS_PER_JOB = 4  # enqueue, dequeue, run, success (plus a seal per commit)
ROUND = 1000
START = 1_780_000_000.0  # 2026-05-28, so that times are plausible


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat().replace("+00:00", "Z")


async def _build(path: Path, events: int, pending: int, step: float) -> dict[str, Any]:
    # The failures below would log an error each; this tool is not the library, and
    # may silence them.
    logging.getLogger("evq").setLevel(logging.CRITICAL)
    clock = evq.FakeClock(START)
    rounds = max(1, events // (EVENTS_PER_JOB * ROUND))

    async def noop(payload: Any) -> None:
        return None

    async def broken(payload: Any) -> None:
        raise ValueError("a failure, for the figures")

    async with evq.Context(path, clock=clock) as ctx:
        ctx.define("noop", noop, queue="default")
        ctx.define("broken", broken, queue="default", max_attempts=1)
        begun = time.perf_counter()
        for done in range(rounds):
            await ctx.enqueue_many(("noop", {"i": i}) for i in range(ROUND))
            clock.advance(step / 2)
            await ctx.drain(concurrency=100)
            clock.advance(step / 2)
            if done % 100 == 0:
                print(f"# built {done}/{rounds} rounds", file=sys.stderr, flush=True)
        await ctx.enqueue_many(("broken", {"i": i}) for i in range(10))
        await ctx.drain()
        await ctx.enqueue_many(("noop", {"i": i}) for i in range(pending))
        built = time.perf_counter() - begun
    return {"rounds": rounds, "build_s": round(built, 1)}


def _run(argv: list[str]) -> dict[str, Any]:
    """Run `python -m evq *argv` to the end: seconds, peak memory, exit code, lines."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "evq", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stderr is not None
    lines = sum(1 for _ in child.stdout)
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - start
    result = {"seconds": round(elapsed, 2), "peak_mb": round(usage.ru_maxrss / 1024),
              "exit": child.returncode, "lines": lines}
    if child.returncode:
        result["stderr"] = err[-400:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000_000,
                        help="about how many events the ledger holds (default 5,000,000)")
    parser.add_argument("--ledger", type=Path, help="where the ledger is kept")
    parser.add_argument("--pending", type=int, default=1000)
    parser.add_argument("--step", type=float, default=60.0,
                        help="fake seconds per round of 1,000 jobs (default 60: ~17 jobs/s, "
                             "so 5M events span about 21 hours)")
    parser.add_argument("--only", help="comma-separated commands to time")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    path = args.ledger or Path(tempfile.gettempdir()) / f"evq-scale-{args.events}.db"
    built: dict[str, Any] = {}
    if not path.exists():
        built = asyncio.run(_build(path, args.events, args.pending, args.step))
    db = ["--db", str(path)]
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        count, first_at, last_at = conn.execute(
            "SELECT count(*), min(at), max(at) FROM evq_events").fetchone()
    middle = _iso((first_at + last_at) / 2)
    hour_before_end = _iso(last_at - 3600)
    some_job = _first_job(path)
    with tempfile.TemporaryDirectory(prefix="evq-scale-") as tmp:
        commands = {
            "jobs_pending": ["jobs", *db, "--state", "pending"],
            "history": ["history", *db, some_job],
            "events_tail": ["events", *db, "--limit", "20"],
            "stats_last_hour": ["stats", *db, "--since", hour_before_end],
            "verify": ["verify", *db],
            "replay_at": ["replay", *db, "--at", middle, "--to", f"{tmp}/at.db"],
            "replay_to": ["replay", *db, "--to", f"{tmp}/to.db"],
        }
        chosen = args.only.split(",") if args.only else list(commands)
        results: dict[str, Any] = {"ledger": {
            "path": str(path), "events": count, "bytes": path.stat().st_size,
            "hours": round((last_at - first_at) / 3600, 1), **built}}
        if not args.json:
            print("# " + "  ".join(f"{k}={v}" for k, v in results["ledger"].items()),
                  flush=True)
        for name in chosen:
            results[name] = _run(commands[name])
            if not args.json:
                print(f"{name:<16} " + "  ".join(
                    f"{k}={v}" for k, v in results[name].items()), flush=True)
    if args.json:
        print(json.dumps(results))


def _first_job(path: Path) -> str:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return str(conn.execute(
            "SELECT id FROM evq_jobs ORDER BY enqueue_position LIMIT 1").fetchone()[0])


if __name__ == "__main__":
    main()
