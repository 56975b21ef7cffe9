"""What happens after an attempt, decided in one pure place.

Given the job's counters, its retry policy and what the handler did, return the events to
append. The database then folds those events into the projection; the decision (retry or
not, and when) is recorded in the events themselves so replay never re-decides.
"""

from __future__ import annotations

import os
import traceback as tb
from typing import Any

import attrs

from .codec import clamp_time
from .retry import Backoff

EXHAUSTED_HOOK = "on_max_attempts_exhausted"


@attrs.frozen
class Planned:
    """An event to append for the job's current attempt."""

    kind: str
    data: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class RetryPolicy:
    """How a job is retried: max_attempts (None means without limit) and the backoff."""

    max_attempts: int | None
    backoff: Backoff
    exhausted_hook: bool = False


_PLUMBING = (os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py"),
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


def after_failure(
    kind: str,
    error: dict[str, Any],
    errors_before: int,
    policy: RetryPolicy,
    now: float,
    *,
    retryable: bool = True,
    extra: dict[str, Any] | None = None,
) -> list[Planned]:
    """Events for a failed attempt (`kind` is error or rescue): retry, or close the job.

    Running out of attempts expires the job; an unrecoverable error fails it.
    """
    errors = errors_before + 1
    data: dict[str, Any] = {"error": error, "errors": errors, **(extra or {})}
    attempts_left = policy.max_attempts is None or errors < policy.max_attempts
    if retryable and attempts_left:
        delay = max(0.0, float(policy.backoff(errors)))
        data["retry_at"] = clamp_time(now + delay)  # a huge backoff waits until 9999
        data["retry_in"] = data["retry_at"] - now
        return [Planned(kind, data)]
    data["retry_at"] = None
    if not retryable:
        return [Planned(kind, data), Planned("fail", {"reason": "unrecoverable"})]
    expire: dict[str, Any] = {"reason": "max_attempts", "errors": errors}
    if policy.exhausted_hook:
        expire["hook"] = EXHAUSTED_HOOK
    return [Planned(kind, data), Planned("expire", expire)]
