"""Job definitions (what a job is and how it is retried), the `Job` handle a handler
receives (with Joystick's explicit outcomes), and `JobRecord`, a job's current state as
read from the ledger."""

from __future__ import annotations

import enum
import functools
import inspect
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

import attrs

from .awaiting import DONE, Done
from .codec import (
    FIRST_DATETIME,
    check_delay,
    check_name,
    stored_datetime,
    stored_json,
    stored_object,
)
from .errors import InvalidInput, LedgerCorrupt, OutcomeAlreadySet
from .outcomes import Planned, RetryPolicy, describe_error
from .retry import Backoff, Exponential
from .schedules import Schedule
from .schedules import parse as parse_schedule

P = TypeVar("P")
Handler = Callable[..., Any] | Callable[..., Awaitable[Any]]



class Enqueuer(Protocol):
    """Where a definition's own `enqueue` adds its jobs (the Context it is registered on)."""

    async def enqueue(self, job: str, payload: Any = None, *, delay: float | None = None,
                      run_at: datetime | str | float | None = None,
                      priority: int | None = None, key: str | None = None,
                      group: str | None = None) -> str: ...


DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_LEASE_SECONDS = 60.0


class JobState(enum.StrEnum):
    """Where a job is. pending includes jobs scheduled for later (see JobRecord.scheduled)."""

    PENDING = "pending"
    WAITING = "waiting"
    """A flow's parent waiting for its children (see `blocked_by` for a failed one)."""
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self not in (JobState.PENDING, JobState.WAITING, JobState.RUNNING)


MAX_ATTEMPTS_LIMIT = 1_000_000


def _check_attempts(instance: Any, attribute: Any, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not 1 <= value <= MAX_ATTEMPTS_LIMIT):
        raise InvalidInput(f"max_attempts must be an integer from 1 to {MAX_ATTEMPTS_LIMIT:,} "
                           f"or None (no limit), got {value!r}")


def _check_priority(instance: Any, attribute: Any, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**31:
        raise InvalidInput(f"priority must be an integer between -2**31 and 2**31, got "
                           f"{value!r}")


def _check_callable(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and not callable(value):
        raise InvalidInput(f"{attribute.name} must be a function (or None), got {value!r:.80}")


def _check_backoff(instance: Any, attribute: Any, value: object) -> None:
    if not callable(value):
        raise InvalidInput("backoff must be evq.Fixed(seconds), evq.Exponential(...) or a "
                           f"function of the error count returning seconds, got {value!r:.80}")


def _check_group(instance: Any, attribute: Any, value: object) -> None:
    if value is not None and not callable(value) and (
            not isinstance(value, str) or not value or len(value) > 256):
        raise InvalidInput("group must be a non-empty string of at most 256 characters, a "
                           f"function of the payload returning one, or None; got {value!r:.80}")


def _check_payload_type(instance: Any, attribute: Any, value: object) -> None:
    if value is not None and not isinstance(value, type):
        raise InvalidInput(f"payload_type must be a class (an attrs class, or None for plain "
                           f"JSON), got {value!r:.80}")


def _check_requeue(instance: Any, attribute: Any, value: object) -> None:
    if not isinstance(value, bool):
        check_delay(value, "requeue_on_failure")


def _check_seconds(instance: Any, attribute: Any, value: float | None) -> None:
    if value is not None and (check_delay(value, attribute.name) <= 0):
        raise InvalidInput(f"{attribute.name} must be > 0 seconds, got {value!r}")


@attrs.define(eq=False, slots=False)
class JobDefinition(Generic[P]):
    """A kind of job: its name, handler and rules. Create it with `Context.job`.

    A definition without a handler can still be enqueued (a producer-only process);
    only workers that have the handler run it.
    """

    name: str = attrs.field(validator=lambda i, a, v: check_name(v, "job"))
    handler: Handler | None = attrs.field(validator=_check_callable)
    queue: str = attrs.field(default=DEFAULT_QUEUE,
                             validator=lambda i, a, v: check_name(v, "queue"))
    payload_type: type[P] | None = attrs.field(default=None, validator=_check_payload_type)
    max_attempts: int | None = attrs.field(default=DEFAULT_MAX_ATTEMPTS, validator=_check_attempts)
    backoff: Backoff = attrs.field(factory=Exponential, validator=_check_backoff)
    lease: float = attrs.field(default=DEFAULT_LEASE_SECONDS, validator=_check_seconds)
    timeout: float | None = attrs.field(default=None, validator=_check_seconds)
    priority: int = attrs.field(default=0, validator=_check_priority)
    group: str | Callable[[Any], str | None] | None = attrs.field(default=None,
                                                                validator=_check_group)
    requeue_on_failure: bool | float = attrs.field(default=False, validator=_check_requeue)
    on_before_add: Callable[..., Any] | None = attrs.field(default=None,
                                                          validator=_check_callable)
    okay_to_run: Callable[..., Any] | None = attrs.field(default=None,
                                                        validator=_check_callable)
    requeue_delay: float = attrs.field(default=60.0, validator=_check_seconds)
    on_max_attempts_exhausted: Callable[..., Any] | None = attrs.field(
        default=None, validator=_check_callable)
    repeat: float | None = None
    cron: str | None = None
    context: Enqueuer | None = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        self.schedule  # noqa: B018 - validate repeat/cron now, not at the first round

    @functools.cached_property
    def schedule(self) -> Schedule | None:
        """When this job repeats (cuckmq's repeatSecs, or a cron expression), if it does."""
        return parse_schedule(self.repeat, self.cron)

    @property
    def failure_delay(self) -> float | None:
        """Seconds before a job.failed() job runs again, or None when failing is final."""
        if self.requeue_on_failure is True:
            return 10.0
        if self.requeue_on_failure is False:
            return None
        return check_delay(self.requeue_on_failure, "requeue_on_failure")

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_attempts, self.backoff,
                           self.on_max_attempts_exhausted is not None)

    @functools.cached_property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

    @functools.cached_property
    def handler_arity(self) -> int:
        """How many positional arguments the handler takes: payload, then job."""
        if self.handler is None:
            return 0
        params = [
            p for p in inspect.signature(self.handler).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        return min(2, len(params))

    async def enqueue(
        self,
        payload: P | Any = None,
        *,
        delay: float | None = None,
        run_at: datetime | str | float | None = None,
        priority: int | None = None,
        key: str | None = None,
        group: str | None = None,
    ) -> str:
        """Add one job of this kind; returns its id once committed (see Context.enqueue)."""
        if self.context is None:
            raise InvalidInput(f"job {self.name!r} is not registered on a Context")
        return await self.context.enqueue(
            self.name, payload, delay=delay, run_at=run_at, priority=priority, key=key,
            group=group)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the handler directly (handy in unit tests of the handler itself)."""
        if self.handler is None:
            raise InvalidInput(f"job {self.name!r} has no handler in this process")
        return self.handler(*args, **kwargs)


@attrs.define(eq=False)
class Job:
    """What a handler knows about the job it runs, and how it can end it explicitly.

    Returning from the handler is success; raising is an error. The explicit outcomes
    (Joystick's `completed`, `failed`, `requeue`, `delete`) take effect when the handler
    returns; choose at most one. Each is a plain call, and may also be awaited
    (`await job.completed()`, as Joystick's handlers write it): the same thing.
    """

    id: str
    name: str
    queue: str
    attempt: int
    errors: int
    max_attempts: int | None
    priority: int
    enqueued_at: datetime
    payload: Any
    worker: str
    log: Any = attrs.field(repr=False)
    _outcome: Planned | None = attrs.field(default=None, repr=False)
    children: tuple[Child, ...] = ()
    """A flow parent's children, as they settled (their results and errors)."""
    cancel_requested: bool = False
    """Set when the job was cancelled while running: stop early (an async handler is
    also cancelled; a sync one can only see this)."""

    @property
    def outcome(self) -> Planned | None:
        return self._outcome

    @property
    def children_values(self) -> dict[str, Any]:
        """The results of the children that succeeded, by child job id (BullMQ's
        `getChildrenValues`)."""
        return {c.id: c.result for c in self.children if c.state == "succeeded"}

    def child_result(self, name: str) -> Any:
        """The result of the one succeeded child with this job name."""
        found = [c for c in self.children if c.name == name and c.state == "succeeded"]
        if len(found) != 1:
            raise LookupError(f"job {self.id} has {len(found)} succeeded children named "
                              f"{name!r}; use job.children_values (by id) instead")
        return found[0].result

    def _choose(self, planned: Planned) -> None:
        if self._outcome is not None:
            raise OutcomeAlreadySet(
                f"job {self.id} already chose {self._outcome.kind!r}; a handler ends a "
                "job one way only"
            )
        self._outcome = planned

    def completed(self, result: Any = None) -> Done:
        """End the job as succeeded with `result` (same as returning it)."""
        self._choose(Planned("success", {"result": result}))
        return DONE

    def failed(self, reason: str | BaseException | None = None) -> Done:
        """End the job as failed for good, without retrying."""
        if isinstance(reason, BaseException):
            error = describe_error(reason)
        else:
            error = {"type": "Failed", "message": reason or "", "traceback": ""}
        self._choose(Planned("fail", {"reason": "handler", "error": error}))
        return DONE

    def requeue(self, delay: float = 0.0) -> Done:
        """Put the job back to run again after `delay` seconds; no attempt is used up."""
        seconds = check_delay(delay)
        self._choose(Planned("requeue", {"reason": "handler", "delay": seconds}))
        return DONE

    def delete(self) -> Done:
        """Remove the job from the current state (its events stay in the ledger)."""
        self._choose(Planned("delete", {"reason": "handler"}))
        return DONE


def _time(value: float | None) -> datetime | None:
    return stored_datetime(value)


def _required_time(value: float) -> datetime:
    return stored_datetime(value) or FIRST_DATETIME


@attrs.frozen
class Child:
    """One edge of a flow, as its parent sees it. state: open, succeeded, failed (the
    parent waits on it), ignored (failed, and the parent runs anyway), removed (failed,
    and dropped from the parent's dependencies) or replaced (by a retry of it)."""

    id: str
    name: str
    queue: str
    on_failure: str
    state: str
    result: Any = None
    error: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Child:
        id_, name, queue, on_failure, state, result, error = row
        return cls(id_, name, queue, on_failure, state, stored_json(result),
                   stored_object(error))


@attrs.frozen
class JobRecord:
    """A job's current state: one row of the projection."""

    id: str
    queue: str
    name: str
    state: JobState
    priority: int
    run_at: datetime
    attempt: int
    errors: int
    max_attempts: int | None
    lease_until: datetime | None
    worker: str | None
    enqueued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: Any
    error: dict[str, Any] | None
    idempotency_key: str | None
    group: str | None
    hook_state: str | None
    orphaned_at: datetime | None
    enqueue_position: int
    updated_position: int
    parent_id: str | None = None
    """The job waiting for this one, in a flow."""
    children: int = 0
    """How many children this job has waited for, in a flow."""
    blocked_by: str | None = None
    """A waiting parent's child that failed for good, which it waits for forever (unless
    that child is retried)."""

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> JobRecord:
        (id_, queue, name, state, priority, run_at, attempt, errors, max_attempts,
         lease_until, worker, enqueued_at, started_at, finished_at, result, error,
         key, group, hook_state, orphaned_at, enqueue_position, updated_position,
         parent_id, children, blocked_by) = row
        try:
            known = JobState(state)
        except ValueError:
            raise LedgerCorrupt(f"job {id_!r} has state {state!r}, which evq never writes: "
                                "the ledger was changed by hand (see `evq verify`)") from None
        return cls(
            id_, queue, name, known, priority, _required_time(run_at), attempt, errors,
            max_attempts, _time(lease_until), worker, _required_time(enqueued_at),
            _time(started_at), _time(finished_at), stored_json(result),
            stored_object(error), key, group, hook_state, _time(orphaned_at),
            enqueue_position, updated_position, parent_id, children, blocked_by,
        )

    def scheduled(self, now: datetime | None = None) -> bool:
        """True for a pending job whose run_at is still ahead."""
        moment = now or datetime.now(UTC)
        return self.state is JobState.PENDING and self.run_at > moment

