"""Queue settings: what a process says about a queue it uses (Joystick's queue options,
cuckmq's channels). Pausing is not a setting but ledger state, shared by every process."""

from __future__ import annotations

from typing import Any

import attrs

from .codec import check_delay, check_name
from .errors import InvalidInput


def _positive_or_none(instance: object, attribute: attrs.Attribute[int | None],
                      value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise InvalidInput(f"{attribute.name} must be an integer >= 1 or None, got {value!r}")


def _seconds_or_none(instance: object, attribute: attrs.Attribute[float | None],
                     value: float | None) -> None:
    if value is not None:
        check_delay(value, attribute.name)


def _flag(instance: object, attribute: attrs.Attribute[bool], value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidInput(f"{attribute.name} must be True or False, got {value!r}")


def _cleanup(instance: object, attribute: Any, value: Any) -> None:
    if value is not None and not isinstance(value, Cleanup):
        raise InvalidInput(f"cleanup must be evq.Cleanup(completed_after=..., "
                           f"failed_after=...) or None, got {value!r:.80}")


@attrs.frozen
class Cleanup:
    """Remove finished jobs from the current state after an age (their events stay in the
    ledger): succeeded ones after `completed_after` seconds, failed, expired and cancelled
    ones after `failed_after`. None keeps them."""

    completed_after: float | None = attrs.field(default=None, validator=_seconds_or_none)
    failed_after: float | None = attrs.field(default=None, validator=_seconds_or_none)


@attrs.frozen
class Queue:
    """A queue's settings in this process.

    concurrency: the most jobs of this queue running at once across every process on the
    ledger (the limit of the process that claims applies). run_on_startup: whether
    `evq worker` and `Context.start_workers` serve it without being asked.
    retry_jobs_running_before_restart: a worker that starts under the name of one that
    is gone (worker names are stable: see identity.py) puts that worker's running jobs
    of this queue back at once.
    """

    name: str = attrs.field(validator=lambda i, a, v: check_name(v, "queue"))
    concurrency: int | None = attrs.field(default=None, validator=_positive_or_none)
    run_on_startup: bool = attrs.field(default=True, validator=_flag)
    retry_jobs_running_before_restart: bool = attrs.field(default=False, validator=_flag)
    cleanup: Cleanup | None = attrs.field(default=None, validator=_cleanup)
