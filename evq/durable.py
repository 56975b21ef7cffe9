"""Durable event handlers and replay into a handler.

A durable handler has a name and a cursor in the ledger (`evq_cursors`). It reads the
events of every process on the file in ledger order, calls the handler for each one it
wants, and moves its cursor after each batch: at least once, with no gap, and after a
crash or restart it resumes where its cursor stands. One consumer holds a name at a time:
it takes the name under a fresh token and renews its lease on a timer, whatever the
handler is doing; once a renewal or a fenced write finds the name taken, it stops
delivering and waits to take it again (see `cursors`). It runs in its own task, so a slow
or failing handler never slows the workers: a handler that raises is retried (with
backoff) on the same event, never skipped. A handler that writes its own rows to the same
file moves its cursor in its own transaction (`advance_cursor`), which makes its effects
happen exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from . import codec, cursors
from .clock import Clock
from .cursors import advance_cursor
from .errors import CursorLost, LedgerError, LedgerUnavailable
from .events import Event
from .ledger.records import SubscriberState
from .logs import get_logger
from .subscribers import EventFilter, Subscriber

if TYPE_CHECKING:
    from .ledger import Ledger

__all__ = ["EventFilter", "SubscriberState", "Subscription", "advance_cursor"]

T = TypeVar("T")
BATCH = 500
SAVE_EVERY = 100  # events handled between cursor saves: the most a crash re-delivers
_log = get_logger("evq.durable")


class _Unavailable:
    """The ledger could not be written just now (a transient error, logged)."""


_UNAVAILABLE = _Unavailable()


class Subscription:
    """Feeds a subscriber the events after a position, then (if `follow`) new ones as
    they commit. With a `name`, the position is a cursor kept in the ledger, held under a
    fresh token per take (`holder`, None while this consumer does not hold the name)."""

    def __init__(self, ledger: Ledger, subscriber: Subscriber, clock: Clock, *,
                 name: str | None = None, after: int = 0, follow: bool = True,
                 lease: float = 30.0) -> None:
        self.ledger = ledger
        self.subscriber = subscriber
        self.clock = clock
        self.name = None if name is None else codec.check_name(name, "handler")
        self.position = after
        self.follow = follow
        self.lease = lease
        self.holder: str | None = None
        self.wake = asyncio.Event()
        self._previous: str | None = None  # the token of the take this consumer lost
        self._saved = after
        self._stopping = False
        self._log = _log.bind(handler=name or "replay")

    def stop(self) -> None:
        self._stopping = True
        self.wake.set()

    async def run(self) -> int:
        """Deliver until stopped (or, without follow, until the head); returns the last
        position handled."""
        keeper: asyncio.Task[None] | None = None
        try:
            if self.name is not None:
                keeper = asyncio.get_running_loop().create_task(self._keep_lease())
            while not self._stopping:
                if self.name is not None and self.holder is None:
                    await self._take_cursor()
                    continue
                self.wake.clear()
                count = await self._deliver_batch()
                if self._stopping or (count == 0 and not self.follow):
                    break
                if count == 0:
                    await self._pause(self.lease / 3)
        except Exception as exc:
            self._log.error("evq.durable_handler_stopped", position=self.position,
                            error=repr(exc))
            raise
        finally:
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            if self.name is not None and self.holder is not None:
                with contextlib.suppress(Exception):  # save where it got, free the name
                    await self.ledger.release_cursor(self.name, self.holder, self.position)
        return self.position

    async def _deliver_batch(self) -> int:
        holder = self.holder
        wanted = self.subscriber.filter
        events = await self.ledger.events(self.position, BATCH, True)
        for event in events:
            if wanted.until is not None and event.timestamp > wanted.until \
                    and not self.follow:
                self._stopping = True
                break
            if wanted.wants(event) and not await self._call(event, holder):
                break
            if self.holder != holder:
                break  # lost the name: the rest of this batch is the new holder's
            self.position = event.position
            if holder is not None and self.position - self._saved >= SAVE_EVERY:
                await self._save(holder)
            if self._stopping:
                break
        if events and holder is not None and self.holder == holder:
            await self._save(holder)
        return len(events)

    async def _call(self, event: Event, holder: str | None) -> bool:
        """Hand `event` to the handler until it succeeds; False if the name was lost."""
        delivery = None if self.name is None or holder is None else cursors.Delivery(
            self.ledger, self.name, holder, event.position)
        delay = 0.5
        while True:
            try:
                with cursors.delivering(delivery):
                    await self.subscriber.call(event)
            except Exception as exc:
                if delivery is not None and (isinstance(exc, CursorLost) or delivery.refused):
                    self._lose(delivery.holder, str(exc))
                    return False
                # At least once, in order: the same event again, later; never skipped.
                self._log.error("evq.durable_handler_failed", position=event.position,
                                kind=event.kind, error=repr(exc), retry_in=delay)
                self.wake.clear()
                await self._pause(delay)
                if self._stopping:
                    raise asyncio.CancelledError from exc
                if self.holder != holder:
                    return False
                delay = min(delay * 2, 60.0)
                continue
            if delivery is not None and delivery.refused:  # the handler swallowed it
                self._lose(delivery.holder, "its advance_cursor was refused")
                return False
            return True

    async def _take_cursor(self) -> None:
        """Wait until this consumer holds the name under a new token, then resume from
        the cursor in the ledger (whatever it had in memory is dropped)."""
        name = self.name
        assert name is not None
        while not self._stopping:
            self.wake.clear()
            if await self._may_take(name):
                holder = cursors.new_holder()
                position = await self._write(functools.partial(
                    self.ledger.take_cursor, name, holder, self._previous, self.lease,
                    self.position))
                if isinstance(position, int):
                    self.holder, self._previous = holder, None
                    self.position = self._saved = position
                    self._log.info("evq.durable_handler_started", position=position,
                                   holder=holder)
                    return
            await self._pause(self.lease / 3)  # another consumer holds it

    async def _may_take(self, name: str) -> bool:
        """Whether a take could succeed now (a read, so a standby does not write on
        every commit it sees); the take itself decides."""
        try:
            lease = await self.ledger.cursor_lease(name)
        except LedgerError:
            return True
        return lease is None or lease.holder is None or lease.holder == self._previous \
            or lease.lease_until is None or lease.lease_until <= self.clock.now()

    async def _keep_lease(self) -> None:
        """Renew the lease by time, however long the handler takes with an event."""
        while True:
            await asyncio.sleep(self.lease / 3)
            if self.holder is None:
                continue
            try:
                await self._save(self.holder)
            except Exception as exc:  # logged; the fence keeps a lapsed lease harmless
                self._log.error("evq.durable_renewal_failed", error=repr(exc))

    async def _save(self, holder: str) -> None:
        """Renew the lease and save the position reached; notice a lost name."""
        name = self.name
        assert name is not None
        position = self.position
        held = await self._write(functools.partial(
            self.ledger.move_cursor, name, holder, position, self.lease))
        if held is True and self.holder == holder:
            self._saved = max(self._saved, position)
        elif held is False:
            self._lose(holder, "its lease ran out and another consumer took the name")

    def _lose(self, holder: str, why: str) -> None:
        if self.holder != holder:
            return
        self._log.warning("evq.durable_handler_lost_cursor", position=self.position,
                          holder=holder, why=why)
        self.holder, self._previous = None, holder
        self.wake.set()

    async def _write(self, write: Callable[[], Awaitable[T]]) -> T | _Unavailable:
        """Run a cursor write; a transient ledger failure is logged, and the caller tries
        again later (the lease leaves room for that)."""
        try:
            return await write()
        except LedgerUnavailable as exc:
            self._log.warning("evq.durable_cursor_write_failed", error=str(exc))
            return _UNAVAILABLE

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if something wakes this subscription."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)
