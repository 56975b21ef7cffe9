"""Event handlers: after each commit, every subscribed handler receives the committed
events in ledger order.

Events this process committed are handed over from memory; anything committed by another
connection on the file (another process, or a caller's own transaction) is read from the
ledger before later events are delivered, so a handler never sees a gap or a reordering.
Handlers run one event at a time in a single task; a handler that raises is logged and the
others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import aiosqlite
import attrs

from .events import Event, event_from_row
from .ledger.sqlite import connection, sql
from .ledger.sqlite.tx import AppendedRow
from .logs import get_logger

EventHandler = Callable[[Event], None] | Callable[[Event], Awaitable[None]]

_log = get_logger("evq.subscribers")
_BATCH = 1000


@attrs.define(eq=False)
class _Subscription:
    handler: EventHandler
    kinds: frozenset[str] | None
    is_async: bool

    def wants(self, kind: str) -> bool:
        # Seals (the hash chain) only for handlers that ask for them by kind.
        return kind in self.kinds if self.kinds is not None else kind != "seal"


class Dispatcher:
    """Delivers committed events to in-process handlers, in ledger order."""

    def __init__(self, path: str | Path) -> None:
        self._path = str(path)
        self._subs: list[_Subscription] = []
        self._inbox: list[list[AppendedRow] | None] = []  # None: catch up from the file
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._reader: aiosqlite.Connection | None = None
        self.delivered_upto = 0

    @property
    def active(self) -> bool:
        return bool(self._subs)

    def add(self, handler: EventHandler, kinds: Iterable[str] | None) -> Callable[[], None]:
        sub = _Subscription(
            handler,
            None if kinds is None else frozenset(str(k) for k in kinds),
            inspect.iscoroutinefunction(handler)
            or inspect.iscoroutinefunction(type(handler).__call__),
        )
        self._subs.append(sub)

        def remove() -> None:
            if sub in self._subs:
                self._subs.remove(sub)

        return remove

    async def open(self, head: int) -> None:
        self.delivered_upto = head
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="evq-events")

    async def close(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    def committed(self, rows: list[AppendedRow]) -> None:
        """Called by the writer right after a commit (in the event loop's thread)."""
        if not self._subs:
            self.delivered_upto = max(self.delivered_upto, rows[-1][0])
            return
        self._put(rows)

    def poke(self) -> None:
        """Another connection committed: read what it wrote before going on."""
        if self._subs:
            self._put(None)

    def _put(self, item: list[AppendedRow] | None) -> None:
        self._inbox.append(item)
        self._idle.clear()
        self._wake.set()

    async def flush(self) -> None:
        """Wait until everything committed so far has been delivered."""
        if self._task is None:
            return
        self._put(None)
        await self._idle.wait()

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._inbox:
                item = self._inbox.pop(0)
                try:
                    if item is None:
                        await self._catch_up(None)
                    else:
                        if item[0][0] > self.delivered_upto + 1:
                            await self._catch_up(item[0][0])
                        await self._deliver(
                            _to_event(r) for r in item if r[0] > self.delivered_upto)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # reading the ledger failed; try again later
                    _log.error("evq.dispatch_failed", error=repr(exc))
            if not self._inbox:
                self._idle.set()

    async def _catch_up(self, before: int | None) -> None:
        """Deliver events past delivered_upto (and before `before`) read from the file."""
        if self._reader is None:
            self._reader = await connection.open_reader(self._path)
        while True:
            if before is None:
                cursor = await self._reader.execute(
                    sql.EVENTS_AFTER, (self.delivered_upto, _BATCH))
            else:
                cursor = await self._reader.execute(
                    sql.EVENTS_BETWEEN, (self.delivered_upto, before))
            rows = list(await cursor.fetchall())
            await cursor.close()
            if not rows:
                return
            await self._deliver(event_from_row(tuple(r)) for r in rows)
            if before is not None or len(rows) < _BATCH:
                return

    async def _deliver(self, events: Iterable[Event]) -> None:
        for event in events:
            for sub in list(self._subs):
                if not sub.wants(event.kind):
                    continue
                try:
                    if sub.is_async:
                        await sub.handler(event)  # type: ignore[misc]
                    else:
                        sub.handler(event)
                except Exception as exc:
                    _log.error("evq.event_handler_failed", handler=_name(sub.handler),
                               position=event.position, kind=event.kind,
                               job_id=event.job_id, error=repr(exc), exc_info=True)
            self.delivered_upto = event.position


def _to_event(row: AppendedRow) -> Event:
    return event_from_row(row, row[8])


def _name(handler: Any) -> str:
    return getattr(handler, "__qualname__", None) or repr(handler)
