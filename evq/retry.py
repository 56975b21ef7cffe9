"""Backoff policies: how long to wait before the next attempt. Pure functions of the
error count (1 for the first failure), so they are easy to test and to reason about."""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

from .codec import check_delay

Backoff = Callable[[int], float]


def _seconds(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    check_delay(value, attribute.name)


@attrs.frozen
class Fixed:
    """Always wait the same number of seconds."""

    seconds: float = attrs.field(default=10.0, validator=_seconds)

    def __call__(self, errors: int) -> float:
        return self.seconds


@attrs.frozen
class Exponential:
    """base * factor ** (errors - 1), capped at `maximum`; with `jitter`, a random point
    between half of that and all of it, so that many failing jobs do not retry in step."""

    base: float = 1.0
    factor: float = 2.0
    maximum: float = 3600.0
    jitter: bool = True
    rng: random.Random = attrs.field(factory=random.Random, eq=False, repr=False)

    def __call__(self, errors: int) -> float:
        try:
            delay = min(self.maximum, self.base * self.factor ** max(0, errors - 1))
        except OverflowError:  # thousands of errors: the cap long since
            delay = self.maximum
        if self.jitter:
            delay = delay / 2 + self.rng.random() * delay / 2
        return delay


def no_delay(errors: int) -> float:
    """Retry at once."""
    return 0.0
