"""What happens after an attempt, decided in one pure place.

Given the job's counters, its retry policy and what the handler did, return the events to
append. The database then folds those events into the projection; the decision (retry or
not, and when) is recorded in the events themselves so replay never re-decides.

The decision is made before the write transaction, because it calls the application's
backoff: user code never runs while the ledger's write lock is held. What the
transaction gets is plain data, with times as delays after the commit's own time.
"""

from __future__ import annotations

import math
import numbers
import os
import traceback as tb
from typing import Any

import attrs

from .codec import clamp_time
from .errors import CallbackError
from .retry import Backoff, Fixed

EXHAUSTED_HOOK = "on_max_attempts_exhausted"
# A backoff that asks for more than this is broken (and its time would be past what
# readers of the ledger accept).
MAX_BACKOFF = 100 * 365.25 * 86400.0
# Which field of an event's data a delay after the commit sets.
_DUE_FIELD = {"error": "retry_at", "rescue": "retry_at", "requeue": "run_at",
              "defer": "run_at"}


@attrs.frozen
class Planned:
    """An event to append for the job's current attempt. `due_in`, when set, is a delay in
    seconds after the commit's time: the transaction sets the event's time field from it
    (`retry_at` for error and rescue, `run_at` for requeue and defer)."""

    kind: str
    data: dict[str, Any] = attrs.field(factory=dict)
    due_in: float | None = None

    def stamped(self, now: float) -> dict[str, Any]:
        """The event's data for a commit at `now`."""
        if self.due_in is None:
            return self.data
        # A huge delay waits until the end of the ledger's range (year 9999).
        return {**self.data, _DUE_FIELD[self.kind]: clamp_time(now + self.due_in)}


@attrs.frozen
class RetryPolicy:
    """How a job is retried: max_attempts (None means without limit) and the backoff."""

    max_attempts: int | None
    backoff: Backoff
    exhausted_hook: bool = False


_HERE = os.path.dirname(os.path.abspath(__file__))
# evq's own frames between a caught error and the user's code that raised it.
_PLUMBING = (os.path.join(_HERE, "attempts.py"),
             os.sep + os.path.join("concurrent", "futures") + os.sep)


def describe_error(exc: BaseException) -> dict[str, Any]:
    """The JSON shape of an error in event data: type, message and traceback (starting
    at the user's code, not at evq's own frames that called it)."""
    frames = tb.extract_tb(exc.__traceback__)
    while frames and any(part in frames[0].filename for part in _PLUMBING):
        del frames[0]
    lines = ["Traceback (most recent call last):\n", *tb.format_list(frames),
             *tb.format_exception_only(type(exc), exc)] if frames else \
        tb.format_exception_only(type(exc), exc)
    return {"type": type(exc).__qualname__, "message": str(exc), "traceback": "".join(lines)}


def callable_name(function: object) -> str:
    """How an error message names a function the application gave evq."""
    name = getattr(function, "__qualname__", None) or getattr(function, "__name__", None)
    module = getattr(function, "__module__", None)
    if not isinstance(name, str):
        return repr(function)
    return f"{module}.{name}" if isinstance(module, str) and module != "builtins" else name


def backoff_delay(backoff: Backoff, errors: int, job: str) -> float:
    """Call a backoff for the `errors`-th failure of `job` (id and name, for messages).
    Raises CallbackError if it raises or returns anything but a number of seconds."""
    name = callable_name(backoff) if not attrs.has(type(backoff)) else repr(backoff)
    try:
        value = backoff(errors)
    except Exception as exc:
        raise CallbackError(
            f"the backoff {name} of job {job} raised {type(exc).__name__}: {exc} (asked "
            f"for failure {errors}); the job is not retried. Fix the backoff") from exc
    try:
        delay = float(value) if isinstance(value, numbers.Real) else math.nan
    except (OverflowError, ValueError, TypeError):
        delay = math.nan
    if isinstance(value, bool) or not 0 <= delay <= MAX_BACKOFF:
        raise CallbackError(
            f"the backoff {name} of job {job} returned {value!r:.200} for failure "
            f"{errors}; a backoff returns a number of seconds, finite, >= 0 and at most "
            f"{MAX_BACKOFF:.0f}. The job is not retried. Fix the backoff")
    return delay


def after_failure(
    kind: str,
    error: dict[str, Any],
    errors_before: int,
    policy: RetryPolicy,
    *,
    job: str = "",
    retryable: bool = True,
    extra: dict[str, Any] | None = None,
) -> list[Planned]:
    """Events for a failed attempt (`kind` is error or rescue): retry, or close the job.

    Running out of attempts expires the job; an unrecoverable error fails it. A backoff
    that raises or returns garbage ends the job too (reason `backoff_failed`, the error
    naming the backoff): `fail` after an error, `expire` after a rescue (a rescuer does
    not hold the attempt, so only expiry may close it). Call this outside any write
    transaction: it runs the application's backoff.
    """
    errors = errors_before + 1
    data: dict[str, Any] = {"error": error, "errors": errors, **(extra or {})}
    attempts_left = policy.max_attempts is None or errors < policy.max_attempts
    if retryable and attempts_left:
        try:
            delay = backoff_delay(policy.backoff, errors, job)
        except CallbackError as exc:
            data["retry_at"] = None
            close = "expire" if kind == "rescue" else "fail"
            return [Planned(kind, data), Planned(close, {
                "reason": "backoff_failed", "errors": errors,
                "error": describe_error(exc)})]
        data["retry_at"] = None  # set from retry_in when the commit's time is known
        data["retry_in"] = delay
        return [Planned(kind, data, due_in=delay)]
    data["retry_at"] = None
    if not retryable:
        return [Planned(kind, data), Planned("fail", {"reason": "unrecoverable"})]
    expire: dict[str, Any] = {"reason": "max_attempts", "errors": errors}
    if policy.exhausted_hook:
        expire["hook"] = EXHAUSTED_HOOK
    return [Planned(kind, data), Planned("expire", expire)]


def after_fail(
    error: dict[str, Any],
    errors_before: int,
    policy: RetryPolicy,
    *,
    requeue_after: float | None = None,
    job: str = "",
) -> list[Planned]:
    """Events for a handler that failed its job itself (`job.failed()`): the attempt
    counts as an error and the job fails at once; with Joystick's requeue_on_failure
    (`requeue_after` seconds), the attempt is retried after that delay instead, while
    attempts remain (then the job expires, as after any error)."""
    if requeue_after is not None:
        retry = RetryPolicy(policy.max_attempts, Fixed(requeue_after), policy.exhausted_hook)
        return after_failure("error", error, errors_before, retry, job=job)
    return [Planned("error", {"error": error, "errors": errors_before + 1, "retry_at": None}),
            Planned("fail", {"reason": "handler"})]


def after_lease_expired(holder: str, errors_before: int, policy: RetryPolicy, *,
                        job: str = "") -> list[Planned]:
    """Events for a rescue of an attempt whose holder stopped renewing its lease: retried
    per policy, or expired (a rescuer does not hold the attempt: only expiry closes it)."""
    error = {"type": "LeaseExpired",
             "message": f"worker {holder} stopped renewing its lease", "traceback": ""}
    return after_failure("rescue", error, errors_before, policy, job=job,
                         extra={"reason": "lease_expired", "holder": holder})
