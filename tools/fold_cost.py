"""What folding the projection costs per job: evq's SQLite triggers against a pure Python
`apply(view, event)` run by the writer, against no projection at all (issue 13, item 4).

    python tools/fold_cost.py [-n 20000] [--rounds 5] [--run-fence update|select]
                              [--only triggers,python,...] [--json]

Each run writes N jobs' lifecycles (enqueue; dequeue + run; success) to a fresh file,
100 jobs per transaction and one transaction per step, as evq's group commit does. Left
out on every side: seals, checkpoints (run between transactions, untimed), the claim's
read of due jobs, and Tx.locked's read of the newest event. Variants:

  triggers   evq's schema.sql: the events only; the guard and fold triggers do the rest
  python     the events into evq_events without guard and fold triggers (the refusals
             of UPDATE and DELETE stay), and for each event the evq_jobs INSERT or
             UPDATE that `apply` computed, the UPDATE fenced by a compare-and-set on
             state, attempt and holder
  floor      the events only, no projection
  *_batched  the same with each step's events in one json_each statement, as evq's
             enqueue of many jobs and its claim write them (reports stay one statement
             per job, as in evq); the Python projection by executemany

After every run the events and evq_jobs are hashed: all variants must have written the
same events, and all with a projection the same evq_jobs (times come from a fake clock,
so they are deterministic too). Figures depend on the machine and its load; variants
are alternated, and medians and minimums of wall and CPU time are reported, with the
round-by-round gap between triggers and Python. Not a test.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evq.ledger import schema_sql
from evq.ledger.sqlite import sql

BATCH = 100
QUEUE, NAME, WORKER = "default", "noop", "bench-host:4242:1"
LEASE_SECONDS = 60.0
MAX_ATTEMPTS = 3
T0 = 1_750_000_000.0  # the fake clock's start
CHECKPOINT_BYTES = 32 * 1024 * 1024  # as evq's writer (wal.py)
PHASES = ("enqueue", "claim", "report")
CLOCKS = ("wall", "cpu")

# evq's own connection pragmas and event statements, with durability PROCESS.
PRAGMAS = (*sql.CONNECTION_PRAGMAS, sql.SET_SYNCHRONOUS.format(level="NORMAL"))
APPEND_EVENT, APPEND_EVENTS_JSON = sql.APPEND_EVENT, sql.APPEND_EVENTS_JSON
LAST_POSITION = sql.LAST_POSITION

# The Python fold's writes: the columns `apply` returns, in its order, then the fence.
INSERT_JOB = (
    "INSERT INTO evq_jobs (id, queue, name, state, priority, run_at, attempt, errors, "
    "max_attempts, enqueued_at, idempotency_key, job_group, enqueue_position, "
    "updated_position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_HELD = "WHERE id = ? AND state = ? AND attempt = ? AND worker IS ?"
UPDATE = {
    "dequeue": "UPDATE evq_jobs SET state = ?, attempt = ?, worker = ?, lease_until = ?, "
               "started_at = ?, orphaned_at = ?, updated_position = ? "
               "WHERE id = ? AND state = ? AND attempt = ?",
    "success": "UPDATE evq_jobs SET state = ?, lease_until = ?, result = ?, finished_at = ?, "
               f"updated_position = ? {_HELD}",
}
# `run` changes no column, so its fence is either a write of no indexed column (SQLite
# rewrites the row) or a read.
FENCE = {
    "update": f"UPDATE evq_jobs SET updated_position = updated_position {_HELD}",
    "select": f"SELECT 1 FROM evq_jobs {_HELD}",
}

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
dumps = _ENCODER.encode

# (position, at, kind, job_id, queue, job, attempt, worker, data): what Tx.appended
# holds for every event, on every side.
Event = tuple[int, float, str, str, str, str, int | None, str | None, dict[str, Any]]
# What the writer knows of a job's row: (state, attempt, holder); from the claim's read
# and the worker's Attempt in evq.
View = tuple[str, int, str | None]
# (kind, job_id, attempt, worker, data, data as JSON text)
NewEvent = tuple[str, str, int | None, str | None, dict[str, Any], str]


class Stale(Exception):
    """A transition its job's row does not allow (evq: LeaseLost)."""


def apply(view: View | None, event: Event) -> dict[str, Any]:
    """The columns of the job's row that `event` sets (all of them for a new job), given
    what the writer knows of the row; Stale if that does not allow the transition. The
    database's compare-and-set on the same view is what fences."""
    position, at, kind, job_id, queue, job, attempt, worker, data = event
    if kind == "enqueue":
        if view is not None:
            raise Stale(job_id)
        return {"id": job_id, "queue": queue, "name": job, "state": "pending",
                "priority": data["priority"], "run_at": data["run_at"], "attempt": 0,
                "errors": 0, "max_attempts": data["max_attempts"], "enqueued_at": at,
                "idempotency_key": data.get("key"), "job_group": data.get("group"),
                "enqueue_position": position, "updated_position": position}
    if view is None:
        raise Stale(job_id)
    state, held, holder = view
    if kind == "dequeue":
        if state != "pending" or held + 1 != attempt:
            raise Stale(job_id)
        return {"state": "running", "attempt": attempt, "worker": worker,
                "lease_until": data["lease_until"], "started_at": at, "orphaned_at": None,
                "updated_position": position}
    if state != "running" or held != attempt or holder != worker:
        raise Stale(job_id)
    if kind == "run":
        return {}
    if kind == "success":
        return {"state": "succeeded", "lease_until": None, "result": dumps(data["result"]),
                "finished_at": at, "updated_position": position}
    raise ValueError(f"this sketch folds no {kind!r}")


def after(view: View | None, changes: dict[str, Any]) -> View:
    if view is None:
        return (changes["state"], changes["attempt"], None)
    return (changes.get("state", view[0]), changes.get("attempt", view[1]),
            changes.get("worker", view[2]))


class Ledger:
    """One run's file and writer state."""

    def __init__(self, path: Path, schema: str, fold: bool, batched: bool, fence: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        for pragma in PRAGMAS:
            self.conn.execute(pragma)
        self.conn.executescript(schema)
        self.wal = f"{path}-wal"
        self.fold, self.batched, self.fence = fold, batched, FENCE[fence]
        self.appended: list[Event] = []  # this transaction's, as Tx keeps them
        self.views: dict[str, View] = {}

    def append(self, now: float, kind: str, job_id: str, attempt: int | None,
               worker: str | None, data: dict[str, Any], text: str) -> None:
        """One event (Tx.append), then its projection if Python folds."""
        cursor = self.conn.execute(APPEND_EVENT,
                                   (now, kind, job_id, QUEUE, NAME, attempt, worker, text))
        position = cursor.lastrowid
        assert position is not None
        event = (position, now, kind, job_id, QUEUE, NAME, attempt, worker, data)
        self.appended.append(event)
        if self.fold:
            self.project(event)

    def project(self, event: Event) -> None:
        kind, job_id = event[2], event[3]
        view = self.views.get(job_id)
        changes = apply(view, event)
        if view is None:
            self.conn.execute(INSERT_JOB, tuple(changes.values()))
        elif kind == "dequeue":
            if self.conn.execute(UPDATE[kind], (*changes.values(), job_id, view[0],
                                                view[1])).rowcount != 1:
                raise Stale(job_id)
        elif not changes:
            cursor = self.conn.execute(self.fence, (job_id, *view))
            held = cursor.rowcount == 1 or (cursor.rowcount < 0 and cursor.fetchone())
            if not held:
                raise Stale(job_id)
        elif self.conn.execute(UPDATE[kind], (*changes.values(), job_id, *view)
                               ).rowcount != 1:
            raise Stale(job_id)
        self.views[job_id] = after(view, changes)

    def append_many(self, now: float, events: Sequence[NewEvent]) -> None:
        """Many events in one statement (Tx.append_many), then, if Python folds, their
        projection by one executemany per kind."""
        rows = [(kind, job_id, QUEUE, NAME, attempt, worker, text)
                for kind, job_id, attempt, worker, _, text in events]
        self.conn.execute(APPEND_EVENTS_JSON, (now, dumps(rows)))
        first = self.conn.execute(LAST_POSITION).fetchone()[0] - len(events) + 1
        made = [(first + i, now, kind, job_id, QUEUE, NAME, attempt, worker, data)
                for i, (kind, job_id, attempt, worker, data, _) in enumerate(events)]
        self.appended.extend(made)
        if self.fold:
            self.project_many(made)

    def project_many(self, events: list[Event]) -> None:
        # Grouped by kind, which keeps each job's order here (a claim's dequeue comes
        # before its run); a general writer must group by position instead.
        inserts: list[tuple[Any, ...]] = []
        updates: dict[str, list[tuple[Any, ...]]] = {}
        views = self.views
        for event in events:
            kind, job_id = event[2], event[3]
            view = views.get(job_id)
            changes = apply(view, event)
            if view is None:
                inserts.append(tuple(changes.values()))
            elif kind == "dequeue":
                updates.setdefault(kind, []).append((*changes.values(), job_id, view[0],
                                                     view[1]))
            else:
                updates.setdefault(kind, []).append((*changes.values(), job_id, *view))
            views[job_id] = after(view, changes)
        if inserts:
            self.conn.executemany(INSERT_JOB, inserts)
        for kind, params in updates.items():
            statement = UPDATE.get(kind, self.fence)
            if statement.startswith("SELECT"):
                found = sum(self.conn.execute(statement, p).fetchone() is not None
                            for p in params)
            else:
                found = self.conn.executemany(statement, params).rowcount
            if found != len(params):
                raise Stale(kind)

    def commit(self) -> None:
        self.conn.execute("COMMIT")
        self.appended.clear()

    def checkpoint(self) -> None:
        """Between transactions, untimed, as evq's writer keeps the WAL short."""
        if os.path.exists(self.wal) and os.path.getsize(self.wal) > CHECKPOINT_BYTES:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def digests(self) -> tuple[str, str]:
        """Hashes of the events and of evq_jobs."""
        events, jobs = (hashlib.sha256(repr(self.conn.execute(query).fetchall()).encode())
                        .hexdigest() for query in ("SELECT * FROM evq_events ORDER BY position",
                                                   "SELECT * FROM evq_jobs ORDER BY id"))
        return events, jobs


def lifecycles(ledger: Ledger, ids: list[str], payloads: list[str]) -> dict[str, float]:
    """Write every job's enqueue, dequeue + run, success; seconds spent per step, of the
    wall clock and of this process's CPU (which other work on the machine disturbs less:
    everything here runs on this one thread, and a commit does not fsync)."""
    spent = {f"{phase}_{clock}": 0.0 for clock in CLOCKS for phase in PHASES}
    conn = ledger.conn

    def clock() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def charge(phase: str, start: tuple[float, float]) -> None:
        wall, cpu = clock()
        spent[f"{phase}_wall"] += wall - start[0]
        spent[f"{phase}_cpu"] += cpu - start[1]
    for number, first in enumerate(range(0, len(ids), BATCH)):
        batch = range(first, min(len(ids), first + BATCH))
        now = T0 + number

        start = clock()
        conn.execute("BEGIN IMMEDIATE")
        enqueues: list[NewEvent] = []
        for i in batch:
            # NewJob.event_data() and .event_text(), as ops.enqueue builds them.
            data = {"payload": {"i": i}, "run_at": now, "priority": 0,
                    "max_attempts": MAX_ATTEMPTS}
            text = (f'{{"payload":{payloads[i]},"run_at":{now!r},"priority":0,'
                    f'"max_attempts":{MAX_ATTEMPTS}}}')
            if ledger.batched:
                enqueues.append(("enqueue", ids[i], None, None, data, text))
            else:
                ledger.append(now, "enqueue", ids[i], None, None, data, text)
        if enqueues:
            ledger.append_many(now, enqueues)
        ledger.commit()
        charge("enqueue", start)

        now += 0.25
        start = clock()
        conn.execute("BEGIN IMMEDIATE")
        claimed: list[NewEvent] = []
        for i in batch:
            data = {"lease_until": now + LEASE_SECONDS}
            text = dumps(data)
            if ledger.batched:
                claimed.append(("dequeue", ids[i], 1, WORKER, data, text))
                claimed.append(("run", ids[i], 1, WORKER, {}, "{}"))
            else:
                ledger.append(now, "dequeue", ids[i], 1, WORKER, data, text)
                ledger.append(now, "run", ids[i], 1, WORKER, {}, "{}")
        if claimed:
            ledger.append_many(now, claimed)
        ledger.commit()
        charge("claim", start)

        now += 0.25
        start = clock()
        conn.execute("BEGIN IMMEDIATE")
        for i in batch:
            data = {"result": None}
            ledger.append(now, "success", ids[i], 1, WORKER, data, dumps(data))
        ledger.commit()
        charge("report", start)
        ledger.checkpoint()
    return spent


def schemas() -> tuple[str, str]:
    """evq's schema, and the same without its guard and fold triggers."""
    full = schema_sql()
    bare, removed = re.subn(r"^CREATE TRIGGER (evq_guard|evq_fold_\w+)\b.*?\bEND;", "",
                            full, flags=re.M | re.S)
    assert removed == 9, removed  # evq_guard and eight evq_fold_* triggers
    return full, bare


VARIANTS = ("triggers", "python", "floor", "triggers_batched", "python_batched",
            "floor_batched")


def run_once(variant: str, tmp: Path, ids: list[str], payloads: list[str], fence: str
             ) -> tuple[dict[str, float], tuple[str, str]]:
    full, bare = schemas()
    kind = variant.removesuffix("_batched")
    path = tmp / f"{variant}.db"
    ledger = Ledger(path, full if kind == "triggers" else bare, fold=kind == "python",
                    batched=variant.endswith("_batched"), fence=fence)
    gc.collect()
    gc.disable()
    try:
        spent = lifecycles(ledger, ids, payloads)
    finally:
        gc.enable()
    done = ledger.conn.execute(
        "SELECT count(*) FROM evq_jobs WHERE state = 'succeeded'").fetchone()[0]
    assert done == (0 if kind == "floor" else len(ids)), (variant, done)
    digests = ledger.digests()
    ledger.conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return spent, digests


def job_ids(n: int) -> list[str]:
    """Ids shaped like evq's (12 hex digits of milliseconds, 20 random), the same every run."""
    pick = random.Random(13)
    start = int(T0 * 1000)
    return [f"{start + i:012x}{pick.getrandbits(80):020x}" for i in range(n)]


def measure(n: int, rounds: int, fence: str, chosen: Sequence[str],
            report: Callable[[str], None]) -> dict[str, Any]:
    ids = job_ids(n)
    payloads = [dumps({"i": i}) for i in range(n)]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
    seen: dict[str, tuple[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="evq-fold-") as tmp:
        for turn in range(rounds):
            order = list(chosen[turn % len(chosen):]) + list(chosen[:turn % len(chosen)])
            for name in order:
                spent, digests = run_once(name, Path(tmp), ids, payloads, fence)
                per_job = {key: seconds / n * 1e6 for key, seconds in spent.items()}
                for clock in CLOCKS:
                    per_job[clock] = sum(per_job[f"{phase}_{clock}"] for phase in PHASES)
                runs[name].append(per_job)
                seen[name] = digests
                _check(seen)
            report(f"round {turn + 1}/{rounds} (wall/cpu µs per job): " + "  ".join(
                f"{name}={runs[name][-1]['wall']:.0f}/{runs[name][-1]['cpu']:.0f}"
                for name in chosen))
    figures: dict[str, Any] = {}
    for name, per_run in runs.items():
        figure: dict[str, Any] = {}
        figures[name] = figure
        for key in per_run[0]:
            values = [run[key] for run in per_run]
            figure[key] = {"median": round(statistics.median(values), 2),
                           "min": round(min(values), 2)}
        for clock in CLOCKS:
            figure[clock]["runs"] = [round(run[clock], 2) for run in per_run]
    # Triggers minus Python fold, round by round (the two ran seconds apart there).
    for suffix in ("", "_batched"):
        if f"triggers{suffix}" in runs and f"python{suffix}" in runs:
            gaps = [t["cpu"] - p["cpu"] for t, p in zip(runs[f"triggers{suffix}"],
                                                         runs[f"python{suffix}"], strict=True)]
            figures[f"triggers{suffix}"]["cpu_over_python"] = {
                "median": round(statistics.median(gaps), 2),
                "runs": [round(gap, 2) for gap in gaps]}
    return figures


def _check(seen: dict[str, tuple[str, str]]) -> None:
    """Every variant wrote the same events; every one with a projection the same rows."""
    events = {digest[0] for digest in seen.values()}
    jobs = {digest[1] for name, digest in seen.items() if not name.startswith("floor")}
    assert len(events) == 1, f"the variants wrote different events: {seen}"
    assert len(jobs) <= 1, f"the projections differ: {seen}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="jobs per run (default 20000)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="runs of each variant, alternated (default 5)")
    parser.add_argument("--run-fence", choices=sorted(FENCE), default="update",
                        help="how the Python fold fences `run`, which changes no column")
    parser.add_argument("--only", help="comma-separated variants (default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(VARIANTS)
    unknown = set(chosen) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")

    def progress(line: str) -> None:
        if not args.json:
            print(line, file=sys.stderr, flush=True)

    figures = measure(args.n, args.rounds, args.run_fence, chosen, progress)
    if args.json:
        print(json.dumps({"jobs": args.n, "batch": BATCH, "rounds": args.rounds,
                          "run_fence": args.run_fence, "variants": figures,
                          "machine": {"cpus": os.cpu_count(), "sqlite": sqlite3.sqlite_version,
                                      "python": sys.version.split()[0]}}))
        return
    print(f"µs per job ({args.n} jobs, {BATCH} per transaction, {args.rounds} rounds, "
          f"run fence: {args.run_fence}; SQLite {sqlite3.sqlite_version}); medians, "
          "min in brackets; +floor: median over the floor's")
    print(f"{'variant':<18}{'wall':>15}{'cpu':>15}{'cpu +floor':>11}"
          + "".join(f"{'cpu ' + phase:>13}" for phase in PHASES))
    for name, figure in figures.items():
        floor = figures.get("floor_batched" if name.endswith("_batched") else "floor")
        over = f"{figure['cpu']['median'] - floor['cpu']['median']:.1f}" if floor else "-"
        print(f"{name:<18}" + "".join(
            f"{figure[key]['median']:>7.1f} [{figure[key]['min']:>5.1f}]" for key in CLOCKS)
              + f"{over:>11}" + "".join(f"{figure[f'{phase}_cpu']['median']:>13.1f}"
                                        for phase in PHASES))
    for name, figure in figures.items():
        if "cpu_over_python" in figure:
            gap = figure["cpu_over_python"]
            print(f"{name} minus python{name.removeprefix('triggers')}, cpu, round by round: "
                  f"median {gap['median']:.1f} of {gap['runs']}")

if __name__ == "__main__":
    main()
