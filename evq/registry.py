"""The registry: the job definitions and queues one process knows, and validating a job
to enqueue against them (nothing is written here)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

import attrs

from . import enqueueing
from .clock import Clock
from .errors import DuplicateJob, InvalidInput, UnknownJob
from .jobs import Enqueuer, Handler, JobDefinition
from .ledger.records import NewJob
from .outcomes import RetryPolicy
from .queues import Queue
from .retry import no_delay

T = TypeVar("T")


def build(cls: type[T], what: str, *args: Any, **options: Any) -> T:
    """`cls(*args, **options)`, refusing an unknown option by name (TypeError's message
    would name the class's internals)."""
    known = {field.alias for field in attrs.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidInput(f"unknown {what} option(s) {', '.join(unknown)}; the options are "
                           f"{', '.join(sorted(known - {'name', 'context'}))}")
    return cls(*args, **options)


class Registry:
    """Definitions and queues by name. `enqueuer` is what a definition's own `enqueue`
    calls (the Context)."""

    def __init__(self, clock: Clock, max_payload_bytes: int, enqueuer: Enqueuer) -> None:
        self.clock = clock
        self.max_payload_bytes = max_payload_bytes
        self.context = enqueuer  # what preflight callbacks receive as their context
        self._definitions: dict[str, JobDefinition[Any]] = {}
        self._queues: dict[str, Queue] = {}

    def queue(self, name: str, **settings: Any) -> Queue:
        if name in self._queues:
            raise DuplicateJob(f"queue {name!r} is already configured on this context")
        queue = build(Queue, "queue", name, **settings)
        self._queues[name] = queue
        return queue

    @property
    def queues(self) -> Mapping[str, Queue]:
        """Every queue this process knows: configured ones, and those its jobs use."""
        known = {d.queue: Queue(d.queue) for d in self._definitions.values()}
        return {**known, **self._queues}

    def define(self, name: str, handler: Handler | None = None, **options: Any
               ) -> JobDefinition[Any]:
        if options.get("backoff") is None:
            options.pop("backoff", None)
        definition: JobDefinition[Any] = build(JobDefinition, "job definition", name,
                                               handler, context=self.context, **options)
        if name in self._definitions:
            raise DuplicateJob(f"job {name!r} is already defined on this context")
        self._definitions[name] = definition
        return definition

    @property
    def definitions(self) -> Mapping[str, JobDefinition[Any]]:
        return dict(self._definitions)

    def definition(self, name: str) -> JobDefinition[Any]:
        try:
            return self._definitions[name]
        except KeyError:
            known = ", ".join(sorted(self._definitions)) or "none"
            raise UnknownJob(
                f"no job named {name!r} is defined on this context (defined: {known}); "
                "register it with @ctx.job or ctx.define"
            ) from None

    def definition_of(self, job: object) -> JobDefinition[Any]:
        """The definition a caller names: a job name or a JobDefinition of this context."""
        if isinstance(job, JobDefinition):
            return self.definition(job.name)
        if not isinstance(job, str):
            raise UnknownJob(f"a job is named by its name (a str) or its JobDefinition, "
                             f"got {job!r:.80}")
        return self.definition(job)

    def retry_policy(self, name: str, max_attempts: int | None) -> RetryPolicy:
        """The retry policy of a job by name; rescue uses it for jobs of any process."""
        definition = self._definitions.get(name)
        if definition is None:
            return RetryPolicy(max_attempts, no_delay)
        return RetryPolicy(max_attempts, definition.backoff,
                           definition.on_max_attempts_exhausted is not None)

    def prepare(
        self,
        job: str | JobDefinition[Any],
        payload: Any = None,
        *,
        delay: float | None = None,
        run_at: datetime | str | float | None = None,
        priority: int | None = None,
        key: str | None = None,
        group: str | None = None,
        now: float | None = None,
    ) -> NewJob:
        """Validate one job to enqueue. Raises a typed error; writes nothing."""
        return enqueueing.prepare(
            self.definition_of(job), payload,
            now=self.clock.now() if now is None else now,
            max_payload_bytes=self.max_payload_bytes, delay=delay, run_at=run_at,
            priority=priority, key=key, group=group)
