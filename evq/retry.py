"""Backoff policies: how long to wait before the next attempt. Pure functions of the
error count (1 for the first failure), so they are easy to test and to reason about."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import attrs

from .errors import InvalidInput, InvalidTime

Backoff = Callable[[int], float]
MAX_SECONDS = 10 * 365 * 86400.0  # no retry waits longer than ten years


def _seconds(instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 0 <= value <= MAX_SECONDS:
        raise InvalidTime(f"{type(instance).__name__}({attribute.name}=...) must be a number "
                           f"of seconds from 0 to {MAX_SECONDS:g}, got {value!r}")


def _factor(instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 1 <= value <= 1000:
        raise InvalidInput(f"Exponential(factor=...) must be a number from 1 to 1000, got "
                           f"{value!r}")


def _flag(instance: object, attribute: attrs.Attribute[bool], value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidInput(f"Exponential(jitter=...) must be True or False, got {value!r}")


@attrs.frozen
class Fixed:
    """Always wait the same number of seconds."""

    seconds: float = attrs.field(default=10.0, validator=_seconds)

    def __call__(self, errors: int) -> float:
        return self.seconds


@attrs.frozen
class Exponential:
    """Wait `base` seconds after the first failure, then `factor` times longer after each
    further one (base * factor ** (errors - 1)), capped at `maximum`. With `jitter` (on by
    default) each wait is a random point between half of that and all of it, so that many
    failing jobs do not retry in step; `jitter=False` gives the exact schedule (BullMQ's
    exponential backoff is `Exponential(base, jitter=False)`)."""

    base: float = attrs.field(default=1.0, validator=_seconds)
    factor: float = attrs.field(default=2.0, validator=_factor)
    maximum: float = attrs.field(default=3600.0, validator=_seconds)
    jitter: bool = attrs.field(default=True, validator=_flag)
    rng: random.Random = attrs.field(factory=random.Random, eq=False, repr=False)

    def __call__(self, errors: int) -> float:
        try:
            delay = min(self.maximum, self.base * self.factor ** max(0, errors - 1))
        except OverflowError:  # a job without an attempt limit that failed many times
            delay = self.maximum
        if self.jitter:
            delay = delay / 2 + self.rng.random() * delay / 2
        return delay


def no_delay(errors: int) -> float:
    """Retry at once."""
    return 0.0
