"""Riding out storage failures: a disk that is full, an I/O error, a write lock held past
`busy_timeout`. A worker keeps what it holds (outcomes, leases to renew, claims to make)
and writes it once the ledger accepts writes again, instead of dying or dropping it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .clock import Clock
from .errors import LedgerLocked, LedgerUnavailable

T = TypeVar("T")

MIN_DELAY = 0.05
MAX_DELAY = 2.0


class Backoff:
    """Delays between tries of a write the ledger could not take: 0.05 s doubling to 2 s.
    After LedgerLocked always the shortest: that write already waited busy_timeout for
    the lock, and a lease renewal must be waiting for it again when it frees."""

    def __init__(self) -> None:
        self._next = MIN_DELAY

    def after(self, exc: LedgerUnavailable) -> float:
        if isinstance(exc, LedgerLocked):
            return MIN_DELAY
        delay = self._next
        self._next = min(MAX_DELAY, delay * 2)
        return delay

    def reset(self) -> None:
        self._next = MIN_DELAY


def log_failure(log: Any, exc: LedgerUnavailable, doing: str, retry_in: float) -> None:
    log.error("evq.storage_error", doing=doing, error=str(exc), kind=type(exc).__name__,
              retry_in=retry_in)


async def until_written(clock: Clock, log: Any, doing: str,
                        write: Callable[[], Awaitable[T]],
                        give_up: Callable[[], bool] = lambda: False) -> T:
    """Run `write` until the ledger takes it, logging `evq.storage_error` and waiting (on
    `clock`) after each transient failure; other errors, and a failure once `give_up()`
    says so, are raised."""
    backoff = Backoff()
    while True:
        try:
            return await write()
        except LedgerUnavailable as exc:
            if give_up():
                raise
            delay = backoff.after(exc)
            log_failure(log, exc, doing, delay)
            await clock.sleep(delay)
