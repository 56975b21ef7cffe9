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
import contextvars
import functools
import inspect
import sqlite3
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from . import codec, cursors
from .cursors import advance_cursor
from .errors import CursorLost, LedgerUnavailable
from .events import Event, event_from_row
from .ledger.sqlite import connection, sql
from .ledger.sqlite.failures import ledger_error
from .ledger.sqlite.tx import Tx
from .logs import get_logger

if TYPE_CHECKING:
    import aiosqlite

    from .context import Context
    from .subscribers import EventHandler

__all__ = ["EventFilter", "SubscriberState", "Subscription", "advance_cursor", "states"]

T = TypeVar("T")
BATCH = 500
SAVE_EVERY = 100  # events handled between cursor saves: the most a crash re-delivers
_log = get_logger("evq.durable")


@attrs.frozen
class EventFilter:
    """Which events a handler wants: by kind, queue, job and time (epoch seconds)."""

    kinds: frozenset[str] | None = None
    queues: frozenset[str] | None = None
    job_id: str | None = None
    since: float | None = None
    until: float | None = None

    @classmethod
    def of(cls, kinds: Iterable[str] | str | None = None,
           queues: Iterable[str] | str | None = None, job_id: str | None = None,
           since: Any = None, until: Any = None) -> EventFilter:
        def names(value: Iterable[str] | str | None) -> frozenset[str] | None:
            if value is None:
                return None
            return frozenset([value] if isinstance(value, str) else (str(v) for v in value))

        return cls(names(kinds), names(queues), job_id,
                   None if since is None else codec.parse_time(since, "since"),
                   None if until is None else codec.parse_time(until, "until"))

    def wants(self, event: Event) -> bool:
        return ((event.kind in self.kinds if self.kinds is not None else event.kind != "seal")
                and (self.queues is None or event.queue in self.queues)
                and (self.job_id is None or event.job_id == self.job_id)
                and (self.since is None or event.timestamp >= self.since)
                and (self.until is None or event.timestamp <= self.until))


@attrs.frozen
class SubscriberState:
    """Where a durable handler stands: its position, the ledger's head, how far behind."""

    name: str
    position: int
    head: int
    holder: str | None
    updated_at: float

    @property
    def lag(self) -> int:
        return max(0, self.head - self.position)


class _Unavailable:
    """The ledger could not be written just now (a transient error, logged)."""


_UNAVAILABLE = _Unavailable()


class Subscription:
    """Feeds `handler` the events after a position, then (if `follow`) new ones as they
    commit. With a `name`, the position is a cursor kept in the ledger, held under a
    fresh token per take (`holder`, None while this consumer does not hold the name)."""

    def __init__(self, ctx: Context, handler: EventHandler, event_filter: EventFilter, *,
                 name: str | None = None, after: int = 0, follow: bool = True,
                 lease: float = 30.0) -> None:
        self.ctx = ctx
        self.handler = handler
        self.filter = event_filter
        self.name = None if name is None else codec.check_name(name, "handler")
        self.position = after
        self.follow = follow
        self.lease = lease
        self.holder: str | None = None
        self.wake = asyncio.Event()
        self.delivered = 0
        self._previous: str | None = None  # the token of the take this consumer lost
        self._saved = after
        self._stopping = False
        self._is_async = inspect.iscoroutinefunction(handler) or \
            inspect.iscoroutinefunction(type(handler).__call__)
        self._log = _log.bind(handler=name or "replay")

    def stop(self) -> None:
        self._stopping = True
        self.wake.set()

    async def run(self) -> int:
        """Deliver until stopped (or, without follow, until the head); returns the last
        position handled."""
        reader = await connection.open_reader(self.ctx.path)
        keeper: asyncio.Task[None] | None = None
        try:
            if self.name is not None:
                keeper = asyncio.get_running_loop().create_task(self._keep_lease())
            while not self._stopping:
                if self.name is not None and self.holder is None:
                    await self._take_cursor(reader)
                    continue
                self.wake.clear()
                count = await self._deliver_batch(reader)
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
            await reader.close()
            if self.name is not None and self.holder is not None:
                with contextlib.suppress(Exception):  # save where it got, free the name
                    await self.ctx.writer.run(functools.partial(
                        cursors.release, name=self.name, holder=self.holder,
                        position=self.position))
        return self.position

    async def _deliver_batch(self, reader: aiosqlite.Connection) -> int:
        holder = self.holder
        cursor = await reader.execute(sql.EVENTS_AFTER, (self.position, BATCH))
        rows = list(await cursor.fetchall())
        await cursor.close()
        for row in rows:
            event = event_from_row(tuple(row))
            if self.filter.until is not None and event.timestamp > self.filter.until \
                    and not self.follow:
                self._stopping = True
                break
            if self.filter.wants(event):
                if not await self._call(event, holder):
                    break
                self.delivered += 1
            if self.holder != holder:
                break  # lost the name: the rest of this batch is the new holder's
            self.position = event.position
            if holder is not None and self.position - self._saved >= SAVE_EVERY:
                await self._save(holder)
            if self._stopping:
                break
        if rows and holder is not None and self.holder == holder:
            await self._save(holder)
        return len(rows)

    async def _call(self, event: Event, holder: str | None) -> bool:
        """Hand `event` to the handler until it succeeds; False if the name was lost."""
        delivery = None if self.name is None or holder is None else cursors.Delivery(
            str(self.ctx.path), self.name, holder, event.position)
        delay = 0.5
        while True:
            try:
                with cursors.delivering(delivery):
                    if self._is_async:
                        await self.handler(event)  # type: ignore[misc]
                    else:
                        await asyncio.get_running_loop().run_in_executor(
                            self.ctx.sync_executor(), contextvars.copy_context().run,
                            self.handler, event)
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

    async def _take_cursor(self, reader: aiosqlite.Connection) -> None:
        """Wait until this consumer holds the name under a new token, then resume from
        the cursor in the ledger (whatever it had in memory is dropped)."""
        assert self.name is not None
        while not self._stopping:
            self.wake.clear()
            if await self._may_take(reader):
                holder = cursors.new_holder()
                position = await self._write(functools.partial(
                    cursors.take, name=self.name, holder=holder, previous=self._previous,
                    lease=self.lease, start=self.position))
                if isinstance(position, int):
                    self.holder, self._previous = holder, None
                    self.position = self._saved = position
                    self._log.info("evq.durable_handler_started", position=position,
                                   holder=holder)
                    return
            await self._pause(self.lease / 3)  # another consumer holds it

    async def _may_take(self, reader: aiosqlite.Connection) -> bool:
        """Whether a take could succeed now (a read, so a standby does not write on
        every commit it sees); the take itself decides."""
        try:
            cursor = await reader.execute(sql.CURSOR_LEASE, (self.name,))
            row = await cursor.fetchone()
            await cursor.close()
        except sqlite3.Error:
            return True
        return row is None or row[0] is None or row[0] == self._previous \
            or row[1] is None or row[1] <= self.ctx.clock.now()

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
        assert self.name is not None
        position = self.position
        held = await self._write(functools.partial(
            cursors.renew, name=self.name, holder=holder, position=position,
            lease=self.lease))
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

    async def _write(self, op: Callable[[Tx], T]) -> T | _Unavailable:
        """Run a cursor write; a transient ledger failure is logged, and the caller tries
        again later (the lease leaves room for that)."""
        try:
            return await self.ctx.writer.run(op)
        except sqlite3.Error as exc:
            error = ledger_error(exc, self.ctx.path, "writing a durable handler's cursor to")
            if not isinstance(error, LedgerUnavailable):
                raise error from exc
            failure: Exception = error
        except LedgerUnavailable as exc:
            failure = exc
        self._log.warning("evq.durable_cursor_write_failed", error=str(failure))
        return _UNAVAILABLE

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if something wakes this subscription."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)


def states(conn: sqlite3.Connection) -> list[SubscriberState]:
    """Every durable handler's state, read on a plain connection (for the CLI)."""
    head = conn.execute(sql.HEAD_POSITION).fetchone()[0]
    return [SubscriberState(name, position, head, holder, updated)
            for name, position, holder, _, updated in conn.execute(sql.LIST_CURSORS)]
