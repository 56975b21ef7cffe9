"""The orchestrator's ledger operations: leadership, repeating jobs, cleanup, orphans,
the registry of live workers, and deployed definitions. Like ops.py, each runs inside one
transaction and writes history only as events."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ... import schedules
from ...codec import dumps
from ...schedules import Schedule
from ..records import Fired, Holder, NewJob
from . import sql
from .ops import enqueue
from .tx import Tx


def lead(tx: Tx, role: str, holder: str, lease: float) -> bool:
    """Take or keep the lead of `role` for `lease` seconds; True if `holder` leads.
    A change of hands is recorded as a `leader` event."""
    before = tx.one(sql.GET_LEADER, (role,))
    tx.conn.execute(sql.CLAIM_LEADERSHIP, (role, holder, tx.now + lease, tx.now))
    leads = bool(tx.one(sql.GET_LEADER, (role,))[0] == holder)
    if leads and (before is None or before[0] != holder):
        tx.append("leader", worker=holder, data={
            "role": role, "previous": before[0] if before else None,
            "previous_lease_until": before[1] if before else None})
    return leads


def step_down(tx: Tx, role: str, holder: str) -> None:
    tx.conn.execute(sql.RELEASE_LEADERSHIP, (role, holder))


HOST = socket.gethostname()


def see_worker(tx: Tx, name: str, jobs: Sequence[str]) -> None:
    """Record that worker `name`, in this process, is alive and can run these job names."""
    tx.conn.execute(sql.SEE_WORKER, (name, json.dumps(sorted(jobs)), tx.now, HOST,
                                     os.getpid()))


def forget_worker(tx: Tx, name: str) -> None:
    """This process's worker `name` stopped (a later holder of the name keeps its entry)."""
    tx.conn.execute(sql.FORGET_WORKER, (name, HOST, os.getpid()))


def worker_holder(tx: Tx, name: str) -> Holder | None:
    row = tx.one(sql.GET_WORKER, (name,))
    return None if row is None else Holder(row[0], row[1], float(row[2]))


def take_worker_name(tx: Tx, candidates: Iterable[str], gone: Callable[[str, Holder], bool]
                     ) -> str | None:
    """The first of `candidates` that no live worker holds: unknown to the registry, or
    whose holder `gone` says has stopped. None if every one is held."""
    for name in candidates:
        holder = worker_holder(tx, name)
        if holder is None or gone(name, holder):
            return name
    return None


def deploy(tx: Tx, definitions: Mapping[str, tuple[str, dict[str, Any]]]) -> list[str]:
    """Record definitions (name -> (queue, settings)) whose settings changed: a `deploy`
    event each. Returns the names deployed."""
    deployed = []
    for name, (queue, settings) in sorted(definitions.items()):
        row = tx.one(sql.GET_DEFINITION, (name,))
        if row is not None and json.loads(row[0]) == settings:
            continue
        tx.append("deploy", queue=queue, job=name, data=settings)
        deployed.append(name)
    return deployed


def fire_schedules(
    tx: Tx,
    local: Mapping[str, tuple[str, Schedule]],
    jobs: Mapping[str, NewJob | dict[str, Any]],
) -> list[Fired]:
    """Fire every due repeating job once. `local` maps job names this process defines to
    (queue, schedule); deployed schedules it does not define are due too, and get a
    `schedule_orphan` event instead of a job. What each schedule does (and the catch-up
    rule) is decided by `schedules.firing`.

    `jobs` holds, for each local name, the job to enqueue if it fires, prepared before
    the transaction (preparing runs the application's group function), or the error
    that preparing it raised: the schedule then fires with that error and no job."""
    deployed = ((name, queue, json.loads(data_text))
                for name, queue, data_text in tx.rows(sql.LIST_DEFINITIONS))
    fired = []
    for name, (queue, schedule) in sorted(schedules.known(local, deployed).items()):
        row = tx.one(sql.GET_SCHEDULE, (name,))
        turn = schedules.firing(schedule, None if row is None else (row[0], row[1]),
                                local=name in local, now=tx.now)
        if turn is None:
            continue
        data = turn.data(schedule.spec)
        if turn.registers:
            tx.append("schedule", queue=queue, job=name, data=data)
            fired.append(Fired(name, "registered", None, turn.next_at))
            continue
        due, next_at, missed = turn.due_at, turn.next_at, turn.missed
        if name in local and isinstance(job := jobs[name], NewJob):
            enqueue(tx, [job])
            tx.append("schedule", job.id, queue, name, data={**data, "job_id": job.id})
            fired.append(Fired(name, "schedule", due, next_at, job.id, missed))
        elif name in local:
            tx.append("schedule", queue=queue, job=name, data={
                **data, "job_id": None, "reason": "job_not_prepared", "error": job})
            fired.append(Fired(name, "schedule_failed", due, next_at, None, missed))
        else:
            tx.append("schedule_orphan", queue=queue, job=name, data={
                **data, "reason": "no definition of this job in the orchestrator's process"})
            fired.append(Fired(name, "schedule_orphan", due, next_at, None, missed))
    return fired


def cleanup(tx: Tx, rules: Sequence[tuple[str, Sequence[str], float]], limit: int) -> int:
    """Remove finished jobs from the current state: rules are (queue, states, age in
    seconds). A `delete` event each (reason cleanup); the events stay in the ledger."""
    removed = 0
    for queue, states, age in rules:
        rows = tx.rows(sql.CLEANUP_CANDIDATES, (queue, dumps(list(states)), tx.now - age, limit))
        for job_id, job_queue, name, state in rows:
            tx.append("delete", job_id, job_queue, name, data={
                "reason": "cleanup", "state": state, "older_than": age})
        removed += len(rows)
    return removed


def report_orphans(tx: Tx, worker_ttl: float, after: float, limit: int) -> list[str]:
    """Jobs due for `after` seconds whose name no live worker (seen within worker_ttl)
    can run: an `orphan` event each, once (until a worker claims the job)."""
    runnable: set[str] = set()
    for (jobs,) in tx.rows(sql.LIVE_WORKER_JOBS, (tx.now - worker_ttl,)):
        runnable.update(json.loads(jobs))
    rows = tx.rows(sql.ORPHAN_CANDIDATES, (tx.now - after, dumps(sorted(runnable)), limit))
    for job_id, queue, name in rows:
        tx.append("orphan", job_id, queue, name, data={
            "reason": "no live worker can run this job", "live_job_names": len(runnable)})
    return [row[0] for row in rows]
