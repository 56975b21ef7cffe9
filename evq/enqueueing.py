"""Turning what a caller asks to enqueue into validated jobs, and asking the job
definitions' preflight (`on_before_add`). Shared by the async Context, the synchronous
producer and enqueue inside the caller's own transaction."""

from __future__ import annotations

import inspect
import os
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Protocol

import attrs

from . import codec
from .clock import Clock
from .errors import CallbackError, EvqError, InvalidInput, InvalidPayload, JobRejected
from .jobs import JobDefinition
from .ledger.records import NewJob
from .outcomes import callable_name


class Definitions(Protocol):
    """What validating and preflight need of the registry (evq/registry.py): the
    definitions by name, the clock, and the context handed to preflight."""

    clock: Clock
    @property
    def context(self) -> object: ...  # handed to preflight callbacks as their context

    def definition(self, name: str) -> JobDefinition[Any]: ...

    def prepare(self, job: str | JobDefinition[Any], payload: Any = None, *,
                delay: float | None = None, run_at: datetime | str | float | None = None,
                priority: int | None = None, key: str | None = None,
                group: str | None = None, now: float | None = None) -> NewJob: ...

CHUNK = 1024


# A generator of our own, seeded from the OS and again in every forked child, so that
# neither a fork nor an application's random.seed() can make two processes agree. (It
# costs a third of os.urandom per id, which bulk enqueues feel.)
_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))


def new_job_id() -> str:
    """32 hex digits: milliseconds since the epoch, then 80 random bits. Ids made later
    sort later, so the ledger's indexes grow at their right edge instead of at random."""
    return f"{time.time_ns() // 1_000_000:012x}{_random.getrandbits(80):020x}"


@attrs.frozen
class EnqueueRequest:
    """One job for `Context.enqueue_many`."""

    job: str | JobDefinition[Any]
    payload: Any = None
    delay: float | None = None
    run_at: datetime | str | float | None = None
    priority: int | None = None
    key: str | None = None
    group: str | None = None


def check_label(value: object, what: str) -> str | None:
    """An idempotency key or group: any non-empty text up to 256 characters."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 256:
        raise InvalidInput(f"{what} must be a non-empty string of at most 256 characters, "
                           f"got {value!r}")
    codec.to_jsonable(value, what)
    return value


def prepare(
    definition: JobDefinition[Any],
    payload: Any,
    *,
    now: float,
    max_payload_bytes: int,
    delay: float | None = None,
    run_at: datetime | str | float | None = None,
    priority: int | None = None,
    key: str | None = None,
    group: str | None = None,
) -> NewJob:
    """Validate one job to enqueue. Raises a typed error; writes nothing."""
    plain, text = codec.encode_text(payload, "payload", max_payload_bytes)
    payload_type = definition.payload_type
    if payload_type is not None and attrs.has(payload_type):
        if not isinstance(payload, (payload_type, dict)):
            raise InvalidPayload(
                f"job {definition.name!r} takes a {payload_type.__name__} payload, got "
                f"{type(payload).__name__}")
        try:
            codec.decode_as(payload_type, plain, strict=True)
        except InvalidPayload as exc:
            raise InvalidPayload(f"payload does not fit {payload_type.__name__}: {exc}"
                                 ) from None
        except Exception as exc:
            raise InvalidPayload(
                f"payload does not fit {payload_type.__name__}: {exc}") from None
    if delay is not None and run_at is not None:
        raise InvalidInput("give delay or run_at, not both")
    if run_at is not None:
        when = codec.parse_time(run_at)
    else:
        when = codec.time_after(now, codec.check_delay(delay) if delay is not None else 0.0)
    level = definition.priority if priority is None else priority
    if isinstance(level, bool) or not isinstance(level, int) or abs(level) > 2**31:
        raise InvalidInput(f"priority must be an integer between -2**31 and 2**31, got "
                           f"{level!r}")
    if group is None and definition.group is not None:
        group = _group_of(definition, payload) if callable(definition.group) \
            else definition.group
    return NewJob(new_job_id(), definition.queue, definition.name, plain, when, level,
                  definition.max_attempts, key=check_label(key, "key"),
                  group=check_label(group, "group"), payload_json=text)


_REQUEST_FIELDS = ("job", "payload", "delay", "run_at", "priority", "key", "group")


def as_request(item: object) -> EnqueueRequest:
    """An EnqueueRequest, or a tuple/list (job, payload, delay, run_at, priority, key,
    group) with at least the job."""
    if isinstance(item, EnqueueRequest):
        return item
    if isinstance(item, (tuple, list)) and 1 <= len(item) <= len(_REQUEST_FIELDS):
        return EnqueueRequest(*item)
    raise InvalidInput(
        f"{item!r:.80} is not a job to enqueue: give an evq.EnqueueRequest or a tuple "
        f"({', '.join(_REQUEST_FIELDS)}) of 1 to {len(_REQUEST_FIELDS)} items, job first")


def _group_of(definition: JobDefinition[Any], payload: Any) -> str | None:
    """Call a definition's group function; CallbackError if it raises or returns
    anything but None or a label."""
    function = definition.group
    assert callable(function)
    where = f"the group function {callable_name(function)} of job {definition.name!r}"
    try:
        group = function(payload)
    except Exception as exc:
        raise CallbackError(f"{where} raised {type(exc).__name__}: {exc}; nothing was "
                            "added. Fix the function") from exc
    if group is not None and not (isinstance(group, str) and 0 < len(group) <= 256):
        raise CallbackError(f"{where} returned {group!r:.200}; it returns None or a "
                            "non-empty string of at most 256 characters. Nothing was added")
    return group


def prepared_chunks(registry: Definitions, requests: Iterable[EnqueueRequest | tuple[Any, ...]]
                    ) -> Iterator[list[NewJob]]:
    """Validate a bulk enqueue lazily, in chunks; an error names the bad item."""
    chunk: list[NewJob] = []
    now = registry.clock.now()
    for index, item in enumerate(requests):
        try:
            request = as_request(item)
            chunk.append(registry.prepare(request.job, request.payload, delay=request.delay,
                                     run_at=request.run_at, priority=request.priority,
                                     key=request.key, group=request.group, now=now))
        except EvqError as exc:
            raise type(exc)(f"item {index} of enqueue_many: {exc}") from None
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --- preflight ------------------------------------------------------------------------
def _preflight_of(registry: Definitions, new: NewJob) -> str:
    check = registry.definition(new.name).on_before_add
    return f"on_before_add {callable_name(check)} of job {new.name!r} ({new.id})"


def _raised(registry: Definitions, new: NewJob, exc: Exception) -> CallbackError:
    return CallbackError(f"{_preflight_of(registry, new)} raised {type(exc).__name__}: {exc}; "
                         "nothing was added. Fix the function")


def _reason(registry: Definitions, new: NewJob, answer: object) -> str | None:
    """None if on_before_add accepted (True or None), else why it refused (False, or a
    reason); CallbackError for any other answer."""
    if answer is True or answer is None:
        return None
    if answer is False:
        return "refused"
    if isinstance(answer, str) and answer:
        return answer
    raise CallbackError(
        f"{_preflight_of(registry, new)} returned {answer!r:.200}; it returns True to add the "
        "job, False or a reason (a non-empty string) to refuse it. Nothing was added")


def _answers(registry: Definitions, jobs: Sequence[NewJob]) -> Iterator[tuple[NewJob, object]]:
    for new in jobs:
        check = registry.definition(new.name).on_before_add
        if check is not None:
            try:
                answer = check(new, registry.context, new.queue)
            except Exception as exc:
                raise _raised(registry, new, exc) from exc
            yield new, answer


async def refusals(registry: Definitions, jobs: Sequence[NewJob]) -> dict[str, str]:
    """Ask each job's on_before_add (sync or async); job id -> reason, for refusals.
    CallbackError if one raises or answers garbage."""
    found: dict[str, str] = {}
    for new, answer in _answers(registry, jobs):
        if inspect.isawaitable(answer):
            try:
                answer = await answer
            except Exception as exc:
                raise _raised(registry, new, exc) from exc
        reason = _reason(registry, new, answer)
        if reason is not None:
            found[new.id] = reason
    return found


def refusals_now(registry: Definitions, jobs: Sequence[NewJob], where: str) -> dict[str, str]:
    """As `refusals`, for synchronous callers: an async on_before_add is an error."""
    found: dict[str, str] = {}
    for new, answer in _answers(registry, jobs):
        if inspect.isawaitable(answer):
            getattr(answer, "close", lambda: None)()
            raise InvalidInput(
                f"job {new.name!r} has an async on_before_add, which {where} cannot "
                "await; make it a plain function or enqueue with `await ctx.enqueue`")
        reason = _reason(registry, new, answer)
        if reason is not None:
            found[new.id] = reason
    return found


def rejected(jobs: Sequence[NewJob], reasons: dict[str, str], note: str) -> JobRejected:
    names = ", ".join(sorted({job.name for job in jobs if job.id in reasons}))
    return JobRejected(
        f"on_before_add refused {len(reasons)} job(s) of {names}: "
        + "; ".join(sorted(set(reasons.values()))) + f"; {note}", reasons)


def in_callers_transaction(new: NewJob, reasons: dict[str, str]) -> str:
    """After an enqueue inside the caller's own transaction: the job's id, or for a job
    refused at enqueue the rejection (its `reject` event commits with that transaction)."""
    if reasons:
        raise rejected([new], reasons, "the `reject` event commits with your transaction")
    return new.id
