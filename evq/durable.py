"""Durable event handlers and replay into a handler.

A durable handler has a name and a cursor in the ledger (`evq_cursors`). It reads the
events of every process on the file in ledger order, calls the handler for each one it
wants, and moves its cursor after each batch: at least once, with no gap, and after a
crash or restart it resumes where its cursor stands. One consumer holds a name at a time
(a lease on the cursor). It runs in its own task, so a slow or failing handler never slows
the workers: a handler that raises is retried (with backoff) on the same event, never
skipped. A handler that writes its own rows to the same file can move its cursor in its
own transaction (`advance_cursor`), which makes its effects happen once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

from . import codec
from .events import Event, event_from_row
from .ledger import connection, sql
from .ledger.tx import Tx
from .logs import get_logger

if TYPE_CHECKING:
    import aiosqlite

    from .context import Context
    from .subscribers import EventHandler

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


def advance_cursor(conn: sqlite3.Connection, name: str, position: int, now: float) -> None:
    """Move durable handler `name`'s cursor to `position` inside the caller's own open
    transaction on the ledger file, so the handler's rows and its progress commit
    together (a crash then never re-delivers an event whose effects were committed)."""
    conn.execute(sql.MOVE_CURSOR_IN_CALLERS_TX, (position, now, name))


class Subscription:
    """Feeds `handler` the events after a position, then (if `follow`) new ones as they
    commit. With a `name`, the position is a cursor kept in the ledger."""

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
        self.holder = f"{name}@{id(self):x}"
        self.wake = asyncio.Event()
        self.delivered = 0
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
        try:
            if self.name is not None:
                await self._take_cursor()
            while not self._stopping:
                self.wake.clear()
                count = await self._deliver_batch(reader)
                if self._stopping or (count == 0 and not self.follow):
                    break
                if count == 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), self.lease / 3)
                    if self.name is not None:
                        await self._renew()
        finally:
            await reader.close()
            if self.name is not None:
                with contextlib.suppress(Exception):  # save where it got, free the name
                    await self.ctx.writer.run(functools.partial(
                        _release, name=self.name, holder=self.holder,
                        position=self.position))
        return self.position

    async def _deliver_batch(self, reader: aiosqlite.Connection) -> int:
        cursor = await reader.execute(sql.EVENTS_AFTER, (self.position, BATCH))
        rows = list(await cursor.fetchall())
        await cursor.close()
        for row in rows:
            event = event_from_row(tuple(row), json.loads(row[8]))
            if self.filter.until is not None and event.timestamp > self.filter.until \
                    and not self.follow:
                self._stopping = True
                break
            if self.filter.wants(event):
                await self._call(event)
                self.delivered += 1
            self.position = event.position
            if self.name is not None and self.position - self._saved >= SAVE_EVERY:
                await self._renew()
            if self._stopping:
                break
        if rows and self.name is not None:
            await self._renew()
        return len(rows)

    async def _call(self, event: Event) -> None:
        delay = 0.5
        while True:
            try:
                if self._is_async:
                    await self.handler(event)  # type: ignore[misc]
                else:
                    await asyncio.get_running_loop().run_in_executor(
                        self.ctx.sync_executor(), self.handler, event)
                return
            except Exception as exc:
                # At least once, in order: the same event again, later; never skipped.
                self._log.error("evq.durable_handler_failed", position=event.position,
                                kind=event.kind, error=repr(exc), retry_in=delay)
                self.wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), delay)
                if self._stopping:
                    raise asyncio.CancelledError from exc
                delay = min(delay * 2, 60.0)

    async def _take_cursor(self) -> None:
        assert self.name is not None
        while not self._stopping:
            position = await self.ctx.writer.run(functools.partial(
                _take, name=self.name, holder=self.holder, lease=self.lease,
                start=self.position))
            if position is not None:
                self.position = self._saved = position
                self._log.info("evq.durable_handler_started", position=position)
                return
            self.wake.clear()  # another consumer holds it: wait for its lease
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.lease / 3)

    async def _renew(self) -> None:
        assert self.name is not None
        held = await self.ctx.writer.run(functools.partial(
            _move, name=self.name, holder=self.holder, position=self.position,
            lease=self.lease))
        self._saved = self.position
        if not held:
            self._log.warning("evq.durable_handler_lost_cursor", position=self.position)
            await self._take_cursor()


def _take(tx: Tx, name: str, holder: str, lease: float, start: int) -> int | None:
    tx.conn.execute(sql.TAKE_CURSOR, (name, start, holder, tx.now + lease, tx.now))
    position, owner = tx.one(sql.GET_CURSOR, (name,))
    return int(position) if owner == holder else None


def _move(tx: Tx, name: str, holder: str, position: int, lease: float) -> bool:
    moved = tx.conn.execute(sql.MOVE_CURSOR, (position, tx.now + lease, tx.now, name, holder))
    return moved.rowcount == 1


def _release(tx: Tx, name: str, holder: str, position: int) -> None:
    tx.conn.execute(sql.RELEASE_CURSOR, (position, tx.now, name, holder))


def states(conn: sqlite3.Connection) -> list[SubscriberState]:
    """Every durable handler's state, read on a plain connection (for the CLI)."""
    head = conn.execute(sql.HEAD_POSITION).fetchone()[0]
    return [SubscriberState(name, position, head, holder, updated)
            for name, position, holder, _, updated in conn.execute(sql.LIST_CURSORS)]
