"""The ledger's intent-level operations. Each runs inside one transaction (`Tx`) and only
appends events (the triggers maintain the projection). The same functions serve the
async group-committing writer, the synchronous producer and enqueue inside a caller's
own transaction, so all of them write exactly the same events."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from queue import Empty, SimpleQueue
from typing import Any

from ... import claiming, transitions
from ...cascades import Ending, cancel_descendants, ended_by, replaced
from ...claiming import Candidate
from ...codec import dumps
from ...jobs import Child
from ...outcomes import EXHAUSTED_HOOK, Planned
from ..records import Attempt, Claimed, JobFeed, NewJob
from . import connection, flows, seals, sql
from .tx import NewEvent, Tx, refusal


def enqueue(tx: Tx, jobs: Sequence[NewJob]) -> list[str]:
    """Append an enqueue event per job; a job whose idempotency key matches a live job
    (pending, waiting or running) is not added: its id is the live job's."""
    ids, fresh = transitions.keyed(jobs, lambda key: live_job_with_key(tx, key))
    if len(fresh) == 1:
        job = fresh[0]
        tx.append("enqueue", job.id, job.queue, job.name, data=job.event_data(),
                  text=job.event_text())
    else:
        tx.append_many([("enqueue", job.id, job.queue, job.name, None, None,
                         job.event_data(), job.event_text()) for job in fresh])
    return ids


def live_job_with_key(tx: Tx, key: str) -> str | None:
    row = tx.one(sql.LIVE_JOB_WITH_KEY, (key,))
    return None if row is None else str(row[0])


def enqueue_alone(conn: sqlite3.Connection, job: NewJob, now: float,
                  last: seals.LastSeal) -> bool:
    """A single job without a key, enqueued and sealed in one autocommit statement: the
    enqueue event and its seal exactly as `enqueue` and `Tx.seal` write them, at the
    positions after `last`, the newest seal this connection wrote. The statement writes
    only if that seal is still the newest event, and SQLite refuses the write if another
    commit landed after the statement began, so the chain can never fork. Returns
    whether it wrote; if not (or the file is busy), nothing was written and the caller
    takes the general path.

    `now` is the clock read just before; `conn` must not wait for the write lock
    (busy_timeout 0), so that the statement either takes the lock at once, at that time,
    or does not write. A `now` before that newest seal's time is left to the general
    path too, which stamps its events no earlier (see `Tx.locked`)."""
    if job.key is not None or not last.position or now < last.at:
        return False
    first = last.position + 1
    text = job.event_text()
    if text is None:
        text = dumps(job.event_data())
    event = seals.digest(seals.line(first, now, "enqueue", job.id, job.queue, job.name,
                                    None, None, text))
    sealed = seals.seal_hash(last.hash, (event,), seals.seal_line(first + 1, now, first))
    try:
        cursor = conn.execute(sql.APPEND_ENQUEUE_SEALED_IF_NEWEST, (
            first, now, job.id, job.queue, job.name, text,
            first + 1, now, seals.data_text(first, sealed), seals.SCHEME, last.position))
    except sqlite3.IntegrityError as exc:
        raise refusal(str(exc), "enqueue", job.id, None) from None
    except sqlite3.OperationalError as exc:
        if connection.is_busy(exc):
            return False
        raise
    if cursor.rowcount != 2:
        return False
    last.position, last.hash, last.at = first + 1, sealed, now
    return True


class EnqueueStream:
    """Enqueue fed in chunks while it runs, in one transaction: the caller validates the
    next chunk while the writer inserts this one. Feed lists of NewJob, then None to
    finish, or an exception to abort (the whole transaction then rolls back). Running it
    again (the writer may redo a batch) replays the chunks already taken."""

    WAIT_SECONDS = 60.0

    def __init__(self, feed: JobFeed | None = None) -> None:
        self.feed: JobFeed = SimpleQueue() if feed is None else feed
        self._taken: list[list[NewJob]] = []
        self._end: BaseException | None = None
        self._finished = False

    def __call__(self, tx: Tx) -> list[str]:
        ids: list[str] = []
        for chunk in self._chunks():
            ids.extend(enqueue(tx, chunk))
        return ids

    def _chunks(self) -> Iterator[list[NewJob]]:
        yield from list(self._taken)
        while not self._finished:
            try:
                item = self.feed.get(timeout=self.WAIT_SECONDS)
            except Empty:
                item = TimeoutError("the bulk enqueue stopped feeding jobs")
            if item is None:
                self._finished = True
            elif isinstance(item, BaseException):
                self._finished, self._end = True, item
            else:
                self._taken.append(item)
                yield item
        if self._end is not None:
            raise self._end


def claim(
    tx: Tx,
    queues: Sequence[str],
    names_json: str,
    limit: int,
    worker: str,
    lease_seconds: Callable[[str], float],
    queue_limits: Mapping[str, int] | None = None,
    run_later: Container[str] = frozenset(),
) -> list[Claimed]:
    """Take up to `limit` due jobs: a dequeue and a run event each, in this transaction.
    Jobs named in `run_later` (their definition asks `okay_to_run` first) get the dequeue
    alone: their worker appends `run` once okay_to_run agrees (`start_run`).

    Paused queues are skipped; a queue with a limit in `queue_limits` gets no more than
    the limit minus the jobs of that queue running now in any process; at most one job
    of a group runs at a time."""
    paused = {row[0] for row in tx.rows(sql.PAUSED_QUEUES)}
    chosen: list[list[Candidate]] = []
    for queue in queues:
        if queue in paused:
            continue
        queue_limit = queue_limits.get(queue) if queue_limits else None
        running = 0 if queue_limit is None else tx.one(sql.RUNNING_IN_QUEUE, (queue,))[0]
        room = claiming.room(limit, queue_limit, running)
        if room <= 0:
            continue
        found = _due(tx, queue, names_json, room)
        kept = claiming.one_per_group(found)
        if claiming.look_further(len(found), len(kept), room):
            kept = claiming.one_per_group(
                _due(tx, queue, names_json, room * claiming.LOOK_FURTHER))
        chosen.append(kept[:room])
    claimed = []
    events: list[NewEvent] = []
    for job in claiming.merge(chosen, limit):
        job_id, queue, name, attempt = job.id, job.queue, job.name, job.attempt + 1
        lease_until = tx.now + lease_seconds(name)
        events.append(("dequeue", job_id, queue, name, attempt, worker,
                       {"lease_until": lease_until}, None))
        if name not in run_later:
            events.append(("run", job_id, queue, name, attempt, worker, {}, None))
        claimed.append(Claimed(
            job_id, queue, name, attempt, job.errors, job.max_attempts, job.priority,
            job.run_at, job.enqueued_at, json.loads(job.data)["payload"], lease_until,
            children_of(tx, job_id) if job.children else (),
        ))
    tx.append_many(events)
    return claimed


def _due(tx: Tx, queue: str, names_json: str, limit: int) -> list[Candidate]:
    """The first `limit` due jobs of `queue` (of groups with no job running), in the
    claim's order."""
    return list(map(Candidate._make, tx.rows(sql.CLAIM_DUE, (queue, tx.now, names_json,
                                                             limit))))


def reject(tx: Tx, jobs: Sequence[NewJob], reasons: Mapping[str, str]) -> None:
    """Record that preflight refused these jobs; nothing else changes."""
    for job in jobs:
        data = job.event_data()
        data["reason"] = reasons.get(job.id, "refused")
        tx.append("reject", job.id, job.queue, job.name, data=data)


def take_hook(tx: Tx, names_json: str, worker: str, lease: float
              ) -> tuple[tuple[Any, ...] | None, float | None]:
    """Take one exhausted-attempts hook of these job names that is due (or whose
    runner's lease ran out): a `hook` event with status started, and the job's row.
    With none to take: (None, when the next runner's lease runs out, if any)."""
    row = tx.one(sql.HOOKS_DUE, (tx.now, names_json, 1))
    if row is None:
        return None, tx.one(sql.NEXT_HOOK_LEASE_EXPIRY, (names_json,))[0]
    tx.append("hook", row[0], row[1], row[2], row[6], worker,
              {"hook": EXHAUSTED_HOOK, "status": "started", "lease_until": tx.now + lease})
    return tuple(row), None


def renew_hook(tx: Tx, job_id: str, queue: str, name: str, attempt: int, worker: str,
               lease: float) -> None:
    """The runner of a hook that is still running keeps it (refused, LeaseLost, if
    another runner took it over)."""
    tx.append("hook", job_id, queue, name, attempt, worker,
              {"hook": EXHAUSTED_HOOK, "status": "renewed", "lease_until": tx.now + lease})


def finish_hook(tx: Tx, job_id: str, queue: str, name: str, attempt: int, worker: str,
                error: dict[str, Any] | None) -> None:
    """The hook returned (done) or raised (failed); refused, LeaseLost, if another
    runner took it over meanwhile (that runner's outcome is the one recorded)."""
    data: dict[str, Any] = {"hook": EXHAUSTED_HOOK, "status": "failed" if error else "done"}
    if error:
        data["error"] = error
    tx.append("hook", job_id, queue, name, attempt, worker, data)


def set_paused(tx: Tx, queue: str, paused: bool, reason: str | None) -> None:
    tx.append("pause" if paused else "resume", queue=queue, data={"reason": reason})


def next_due(tx: Tx, queues_json: str, names_json: str) -> float | None:
    """When the next pending job of these queues and names becomes due."""
    value = tx.one(sql.NEXT_DUE, (queues_json, names_json))[0]
    return None if value is None else float(value)


def next_lease_expiry(tx: Tx) -> float | None:
    value = tx.one(sql.NEXT_LEASE_EXPIRY)[0]
    return None if value is None else float(value)


def children_of(tx: Tx, job_id: str) -> tuple[Child, ...]:
    return tuple(Child.from_row(tuple(row)) for row in tx.rows(sql.CHILDREN_OF, (job_id,)))


def start_run(tx: Tx, held: Attempt) -> None:
    """The handler of a job claimed with its dequeue alone starts now: its `run` event
    (refused, LeaseLost, if the attempt is no longer held)."""
    tx.append("run", held.job_id, held.queue, held.name, held.attempt, held.worker, {})


def holds(tx: Tx, held: Attempt) -> bool:
    """Whether `held` is the job's running attempt, as the ledger's guard checks before
    any report on it."""
    row = tx.one(sql.GET_JOB, (held.job_id,))
    return (row is not None and row[_STATE] == "running" and row[_ATTEMPT] == held.attempt
            and row[_WORKER] == held.worker)


_STATE, _ATTEMPT, _WORKER = (sql.JOB_FIELD[name] for name in ("state", "attempt", "worker"))


def report(tx: Tx, held: Attempt, planned: Sequence[Planned]) -> list[Planned]:
    """Append the outcome events of an attempt; refused (LeaseLost) if it is not held.
    Returns the steps with their times set from the commit's (`Planned.due_in`)."""
    stamped = [Planned(step.kind, step.stamped(tx.now)) for step in planned]
    for step in stamped:
        tx.append(step.kind, held.job_id, held.queue, held.name, held.attempt,
                  held.worker, step.data)
    flows.settle_planned(tx, held.job_id, stamped)
    return stamped


def release_previous(tx: Tx, worker: str, queues_json: str) -> list[str]:
    """Joystick's retry_jobs_running_before_restart: the jobs a worker of this name was
    running (it restarted, so it is not running them now) go back at once, keeping
    their run_at so they come before newer jobs. No attempt is counted."""
    rows = tx.rows(sql.RUNNING_UNDER_WORKER, (worker, queues_json))
    for job_id, queue, name, attempt, run_at in rows:
        tx.append("requeue", job_id, queue, name, attempt, worker,
                  {"reason": "worker_restart", "run_at": run_at})
    return [row[0] for row in rows]


_PARENT, _CHILDREN = sql.JOB_FIELD["parent_id"], sql.JOB_FIELD["children"]
_STATE = sql.JOB_FIELD["state"]


def cancel(tx: Tx, job_id: str, reason: str | None) -> list[tuple[str, bool]]:
    """Cancel a job that has not ended, and the descendants of a flow's parent that have
    not; returns (id, was it running) for each, this job first (a running one's worker
    must stop)."""
    row = tx.one(sql.GET_JOB, (job_id,))
    queue, name, state, worker = (row[1], row[2], row[3], row[10]) if row else (None,) * 4
    tx.append("cancel", job_id, queue, name,
              data=transitions.cancel_data(reason, state, worker))
    cancelled = [(job_id, state == "running")]
    if row and row[_CHILDREN]:
        below = cancel_descendants(job_id, flows.View(tx), "parent_cancelled")
        flows.append(tx, below)
        cancelled += [(event.job_id, event.running) for event in below]
    if row and row[_PARENT] is not None:
        flows.settle(tx, Ending(job_id, False, None, ended_by("cancel", reason)))
    return cancelled


def run_now(tx: Tx, job_id: str, reason: str | None) -> float:
    """Make a pending job due now (an operator's "run now" for a delayed one): a
    `run_now` event with its new run_at and the one it had (`was`). A job already due
    keeps its time, and so its place: nothing is written. Returns the run_at."""
    row = tx.one(sql.GET_JOB, (job_id,))
    transitions.check_run_now(job_id, None if row is None else row[_STATE])
    was = float(row[sql.JOB_FIELD["run_at"]])
    if was <= tx.now:
        return was
    tx.append("run_now", job_id, row[1], row[2],
              data={"reason": reason, "run_at": tx.now, "was": was})
    return tx.now


def retry(tx: Tx, job_id: str, new_id: str, reason: str | None) -> str:
    """Run a job that ended badly again, as a new job with the same payload and settings
    (a job ends once: the old one keeps its history). A `retry` event on the old job
    names the new one; the new one's enqueue names the old one (`retry_of`)."""
    row = tx.one(sql.GET_JOB, (job_id,))
    transitions.check_retry(job_id, None if row is None else row[_STATE],
                            0 if row is None else row[_CHILDREN])
    data = json.loads(tx.one(sql.EVENT_DATA, (row[sql.JOB_FIELD["enqueue_position"]],))[0])
    new = NewJob(new_id, row[1], row[2], data["payload"], tx.now, int(data["priority"]),
                 data.get("max_attempts"), group=data.get("group"), retry_of=job_id)
    enqueue(tx, [new])
    tx.append("retry", job_id, row[1], row[2], data={"reason": reason, "new_job_id": new_id})
    edge = flows.View(tx).failed_edge(job_id)
    if edge is not None:
        flows.append(tx, replaced(job_id, edge, new_id))
    return new_id


def cancelled_among(tx: Tx, job_ids_json: str) -> list[str]:
    """Which of these (running) jobs have been cancelled meanwhile."""
    return [row[0] for row in tx.rows(sql.CANCELLED_AMONG, (job_ids_json,))]


def delete(tx: Tx, job_id: str, reason: str | None) -> list[tuple[str, bool]]:
    """Remove a job that is not running from the current state; a flow's parent takes
    its descendants that have not ended with it (cancelled). Returns (id, was it
    running) for each of those."""
    row = tx.one(sql.GET_JOB, (job_id,))
    queue, name = (row[1], row[2]) if row else (None, None)
    # Decided before the delete, whose event takes the parent's edges with it.
    below = (cancel_descendants(job_id, flows.View(tx), "parent_deleted")
             if row and row[_CHILDREN] else [])
    tx.append("delete", job_id, queue, name, data={"reason": reason})
    assert row is not None  # the delete guard refuses an unknown job
    flows.append(tx, below)
    if row[_PARENT] is not None:
        flows.settle(tx, Ending(job_id, False, None, ended_by("delete", reason), True))
    return [(event.job_id, event.running) for event in below]
