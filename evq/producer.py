"""Enqueue without an event loop: for Django, Flask, scripts and any thread.

`Context.sync()` gives a SyncProducer on the same ledger. It validates with the
context's job definitions, asks their preflight, and writes through a producer session
of the ledger (`Ledger.producer`), so the events are exactly those of the async path;
workers in any process pick the jobs up.

A call waits at most the context's `busy_timeout` for another connection's lock in
total, and a storage failure is raised as the typed `evq.LedgerError` that says why
(nothing of the call was written).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import flows
from .enqueueing import prepared_chunks, refusals_now, rejected
from .ledger import records

if TYPE_CHECKING:
    from .enqueueing import EnqueueRequest
    from .jobs import JobDefinition
    from .ledger import Ledger
    from .registry import Registry

T = TypeVar("T")


class SyncProducer:
    """Adds jobs from synchronous code. Thread-safe; use it as a context manager or call
    close(). Each call is one transaction."""

    def __init__(self, ledger: Ledger, registry: Registry) -> None:
        self._registry = registry
        self._session = ledger.producer(registry.clock)

    def __enter__(self) -> SyncProducer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    def enqueue(
        self,
        job: str | JobDefinition[Any],
        payload: Any = None,
        *,
        delay: float | None = None,
        run_at: datetime | str | float | None = None,
        priority: int | None = None,
        key: str | None = None,
        group: str | None = None,
    ) -> str:
        """Add a job; returns its id once committed (see `Context.enqueue`)."""
        new = self._registry.prepare(job, payload, delay=delay, run_at=run_at, priority=priority,
                                key=key, group=group)
        return self._write([new], self._session.enqueue)[0]

    def enqueue_many(self, requests: Iterable[EnqueueRequest | tuple[Any, ...]]) -> list[str]:
        """Add many jobs in one transaction: all of them or, on any bad one, none."""
        jobs = [job for chunk in prepared_chunks(self._registry, requests) for job in chunk]
        return self._write(jobs, self._session.enqueue) if jobs else []

    def enqueue_flow(self, flow: flows.FlowJob) -> records.FlowNode:
        """Add a tree of jobs in one transaction (see `Context.enqueue_flow`)."""
        root = flows.plan(self._registry, flow)
        return self._write(root.jobs(), lambda _: self._session.enqueue_tree(root))

    def add_children(self, parent_id: str, children: Sequence[flows.FlowJob]
                     ) -> list[records.FlowNode]:
        """Add children to a job that has not started (see `Context.add_children`)."""
        planned = flows.plan_children(self._registry, children)
        return self._write([job for node in planned for job in node.jobs()],
                           lambda _: self._session.add_children(parent_id, planned))

    def _write(self, jobs: list[records.NewJob],
               write: Callable[[list[records.NewJob]], T]) -> T:
        """Ask preflight first (no user code runs inside the write); a refusal records
        the `reject` events instead, adds nothing, and raises JobRejected."""
        refused = refusals_now(self._registry, jobs, "a SyncProducer")
        if refused:
            self._session.reject([j for j in jobs if j.id in refused], refused)
            raise rejected(jobs, refused, "nothing was added")
        return write(jobs)
