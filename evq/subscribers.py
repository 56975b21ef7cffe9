"""Event handlers: after each commit, every subscribed handler receives the committed
events in ledger order.

One subscription path serves every kind of handler: an `EventFilter` says which events
a handler wants, and a `Subscriber` calls it by one rule: an async handler (a coroutine
function, or an object whose `__call__` is one) is awaited in its subscription's task; a
sync one is called in the context's handler thread pool, so neither kind of handler ever
blocks the event loop. In-process handlers are fed by the `Dispatcher` below; durable
handlers and replays by `evq.durable.Subscription`.

The Dispatcher hands over the events this process committed from memory; anything
committed by another connection on the file (another process, or a caller's own
transaction) is read from the ledger before later events are delivered, so a handler
never sees a gap or a reordering. It delivers in a single task; a handler that raises is
logged and the others go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

import attrs

from . import codec
from .events import Event, event_from_row
from .logs import get_logger

if TYPE_CHECKING:
    from .ledger import Ledger
    from .ledger.records import Committed

EventHandler = Callable[[Event], None] | Callable[[Event], Awaitable[None]]

_log = get_logger("evq.subscribers")
_BATCH = 1000


@attrs.frozen
class EventFilter:
    """Which events a handler wants: by kind, queue, job and time (epoch seconds). The
    hash chain's `seal` events only when asked for by kind."""

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


def is_async(handler: object) -> bool:
    """Whether calling `handler` gives an awaitable: a coroutine function, or an object
    whose `__call__` is one."""
    return inspect.iscoroutinefunction(handler) or \
        inspect.iscoroutinefunction(type(handler).__call__)


class Subscriber:
    """A handler, the events it wants, and how it is called (see the module's doc)."""

    __slots__ = ("_executor", "filter", "handler", "is_async")

    def __init__(self, handler: EventHandler, event_filter: EventFilter,
                 executor: Callable[[], Executor]) -> None:
        self.handler = handler
        self.filter = event_filter
        self.is_async = is_async(handler)
        self._executor = executor

    async def call(self, event: Event) -> None:
        """Hand one event to the handler; whatever it raises propagates."""
        if self.is_async:
            await self.handler(event)  # type: ignore[misc]
        else:
            await asyncio.get_running_loop().run_in_executor(
                self._executor(), contextvars.copy_context().run, self.handler, event)

    async def call_each(self, events: Sequence[Event],
                        failed: Callable[[Subscriber, Event, Exception], None]) -> None:
        """Hand each event to the handler in order; one that raises is reported to
        `failed` and the next goes on. A sync handler takes them all in one trip to its
        thread."""
        if self.is_async:
            for event in events:
                try:
                    await self.handler(event)  # type: ignore[misc]
                except Exception as exc:
                    failed(self, event, exc)
            return

        def each() -> None:
            for event in events:
                try:
                    self.handler(event)
                except Exception as exc:
                    failed(self, event, exc)

        await asyncio.get_running_loop().run_in_executor(
            self._executor(), contextvars.copy_context().run, each)

    @property
    def name(self) -> str:
        return getattr(self.handler, "__qualname__", None) or repr(self.handler)


class Dispatcher:
    """Delivers committed events to in-process handlers, in ledger order."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._subs: list[Subscriber] = []
        self._inbox: list[Sequence[Committed] | None] = []  # None: catch up from the file
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.delivered_upto = 0

    def add(self, subscriber: Subscriber) -> Callable[[], None]:
        self._subs.append(subscriber)

        def remove() -> None:
            if subscriber in self._subs:
                self._subs.remove(subscriber)

        return remove

    async def open(self, head: int) -> None:
        self.delivered_upto = head
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="evq-events")

    async def close(self) -> None:
        """Deliver what was committed so far (the ledger must still be open), then stop."""
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def committed(self, rows: Sequence[Committed]) -> None:
        """Called by the writer right after a commit (in the event loop's thread)."""
        if not self._subs:
            self.delivered_upto = max(self.delivered_upto, rows[-1].position)
            return
        self._put(rows)

    def poke(self) -> None:
        """Another connection committed: read what it wrote before going on."""
        if self._subs:
            self._put(None)

    def _put(self, item: Sequence[Committed] | None) -> None:
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
                        if item[0].position > self.delivered_upto + 1:
                            await self._catch_up(item[0].position)
                        await self._deliver([_to_event(r) for r in item
                                             if r.position > self.delivered_upto])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # reading the ledger failed; try again later
                    _log.error("evq.dispatch_failed", error=repr(exc))
            if not self._inbox:
                self._idle.set()

    async def _catch_up(self, before: int | None) -> None:
        """Deliver the events past delivered_upto (and before `before`) read from the
        ledger."""
        while True:
            events = await self._ledger.events(self.delivered_upto, _BATCH, True)
            read = len(events)
            if before is not None:
                events = [e for e in events if e.position < before]
            if not events:
                return
            await self._deliver(events)
            if len(events) < read or read < _BATCH:
                return

    async def _deliver(self, events: list[Event]) -> None:
        if not events:
            return
        for sub in list(self._subs):
            wanted = [e for e in events if sub.filter.wants(e)]
            if wanted and sub in self._subs:
                await sub.call_each(wanted, _failed)
        self.delivered_upto = events[-1].position


def _failed(sub: Subscriber, event: Event, exc: Exception) -> None:
    _log.error("evq.event_handler_failed", handler=sub.name, position=event.position,
               kind=event.kind, job_id=event.job_id, error=repr(exc), exc_info=exc)


def _to_event(row: Committed) -> Event:
    return event_from_row(row, row.data)
