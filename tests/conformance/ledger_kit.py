"""What the conformance tests share besides fixtures: how an engine is plugged in
(`EngineKit`), and small builders for the records the interface takes (jobs, claims,
attempts, outcomes). Nothing here knows an engine; conftest.py holds the engines."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs

from evq.archive import whole_flows
from evq.clock import Clock
from evq.events import Event
from evq.ledger import Ledger, audit_records, records
from evq.outcomes import Planned, RetryPolicy, after_failure
from evq.retry import Fixed

ERROR = {"type": "Boom", "message": "boom", "traceback": ""}
Commits = list[list[records.Committed]]  # each commit's events, as on_commit got them
LIVE = ("pending", "waiting", "running")
TERMINAL_KINDS = ("success", "fail", "expire", "cancel")


class CallerConnection(Protocol):
    """A connection of the engine's driver that a user's own code holds, on the ledger
    (what `enqueue_in` and `advance_cursor_in` write through)."""

    @property
    def conn(self) -> object: ...

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    @property
    def in_transaction(self) -> bool: ...

    def close(self) -> None: ...


@attrs.frozen
class EngineKit:
    """One engine, as the suite uses it: where a fresh ledger lives (a file; a schema),
    a handle on it, a user's own connection to it, and a forger (raw edits that go
    around the interface, as someone with the storage's password could make)."""

    name: str
    place: Callable[[Path], str]
    handle: Callable[[str], Ledger]
    caller: Callable[[str], CallerConnection]
    forger: Callable[[str], Any]


_ids = itertools.count(1)


def job_id(prefix: str = "job") -> str:
    return f"{prefix}-{next(_ids):06d}"


def new_job(clock: Clock, queue: str = "q", name: str = "n", *, payload: Any = None,
            delay: float = 0.0, priority: int = 0, attempts: int | None = 3,
            key: str | None = None, group: str | None = None, id: str | None = None
            ) -> records.NewJob:
    return records.NewJob(id or job_id(), queue, name, payload, clock.now() + delay,
                          priority, attempts, key=key, group=group)


def node(clock: Clock, on_failure: str = "wait", *children: records.PlannedNode,
         queue: str = "q", name: str = "n", key: str | None = None,
         keep_children: bool = False, attempts: int | None = 1) -> records.PlannedNode:
    job = attrs.evolve(new_job(clock, queue, name, attempts=attempts, key=key),
                       keep_children=keep_children)
    return records.PlannedNode(job, on_failure, children)


def request(worker: str = "w1", queues: Sequence[str] = ("q",),
            names: Sequence[str] = ("n",), limit: int = 10, lease: float = 30.0,
            queue_limits: dict[str, int] | None = None,
            run_later: Iterable[str] = ()) -> records.ClaimRequest:
    return records.ClaimRequest(worker, tuple(queues), tuple(names), limit,
                                {name: lease for name in names}, queue_limits or {},
                                frozenset(run_later))


async def claim(ledger: Ledger, worker: str = "w1", **kwargs: Any
                ) -> list[records.Attempt]:
    """Claim for `worker` (see `request`); the attempts it now holds, in claim order."""
    result = await ledger.claim(request(worker, **kwargs))
    return [held(job, worker) for job in result.claimed]


def held(job: records.Claimed, worker: str) -> records.Attempt:
    return records.Attempt(job.id, job.queue, job.name, job.attempt, worker)


def success(result: Any = None) -> list[Planned]:
    return [Planned("success", {"result": result})]


def failure(errors_before: int, attempts: int | None, *, retryable: bool = True,
            backoff: float = 0.0) -> list[Planned]:
    """What a handler's error writes, decided as the worker decides it."""
    return after_failure("error", dict(ERROR), errors_before,
                         RetryPolicy(attempts, Fixed(backoff)), retryable=retryable)


def kinds(events: Iterable[Event | records.Committed], seals: bool = True) -> list[str]:
    return [e.kind for e in events if seals or e.kind != "seal"]


async def job_kinds(ledger: Ledger, job_id: str) -> list[str]:
    return kinds(await ledger.history(job_id))


async def all_events(ledger: Ledger) -> list[Event]:
    """Every event of the ledger, seals included, in order."""
    found: list[Event] = []
    while batch := await ledger.events(found[-1].position if found else 0, 1000, True):
        found.extend(batch)
    return found


async def state(ledger: Ledger, job_id: str) -> str | None:
    job = await ledger.get_job(job_id)
    return None if job is None else str(job.state)


class MemoryArchive:
    """An archive file kept in memory: what `archive` wrote, and its SHA-256."""

    def __init__(self, name: str = "archive.jsonl") -> None:
        self.name = name
        self.rows: dict[int, tuple[Any, ...]] = {}
        self.sha256 = ""

    def write(self, events: Sequence[audit_records.StoredEvent]) -> str:
        text = "".join(json.dumps(event._asdict()) + "\n" for event in events)
        self.rows = {event.position: tuple(event) for event in events}
        self.sha256 = hashlib.sha256(text.encode()).hexdigest()
        return self.sha256

    def request(self, before: float, now: float) -> audit_records.ArchiveRequest:
        return audit_records.ArchiveRequest(before, self.name, self.write, whole_flows, now)

    def file(self) -> audit_records.ArchiveFile:
        return audit_records.ArchiveFile(self.name, self.sha256, self.rows)


def head_of(check: audit_records.LedgerCheck) -> str:
    assert check.chain is not None
    return check.chain.head


def sound(check: audit_records.LedgerCheck, complete: bool = True) -> None:
    assert check.damage == () and check.rules_off == (), check
    assert check.chain is not None and check.chain.ok, check.chain
    assert check.chain.complete == complete, check.chain
    assert check.replay is not None and check.replay.ok, check.replay
