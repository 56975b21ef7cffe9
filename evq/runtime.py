"""The runtime one Context hands to its workers, orchestrators and hook runners: the
ledger, the clock and the registry, and the plumbing of one process between them: event
delivery after each commit, waking workers when work may have come, stopping a job this
process cancelled, and the threads that run synchronous user code."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from .clock import Clock
from .durable import Subscription
from .errors import ContextClosed
from .ledger import Ledger, records
from .queues import Queue
from .registry import Registry
from .subscribers import Dispatcher
from .watch import CommitWatcher

# Commits after which a job may have become claimable.
_WAKING_KINDS = frozenset({"enqueue", "requeue", "defer", "error", "rescue", "ready",
                           "run_now"})


class Stoppable(Protocol):
    def stop(self) -> object: ...  # asks it to stop (what it returns is not awaited)


def settings_of(definition: Any, queue: Queue | None = None) -> dict[str, Any]:
    """What `deploy` records of a definition: what other processes need to know (and
    the dashboard shows), with its queue's concurrency limit when this process set one."""
    settings = {
        "queue": definition.queue, "max_attempts": definition.max_attempts,
        "lease": definition.lease, "priority": definition.priority,
        "repeat": definition.repeat, "cron": definition.cron,
    }
    if queue is not None and queue.concurrency is not None:
        settings["queue_concurrency"] = queue.concurrency
    return settings


class Runtime:
    """One process's live side of a ledger, open between `open` and `close`."""

    def __init__(self, ledger: Ledger, clock: Clock, registry: Registry, *,
                 poll_interval: float, sync_threads: int) -> None:
        self.ledger = ledger
        self.clock = clock
        self.registry = registry
        self.dispatcher = Dispatcher(ledger)
        self._watcher = CommitWatcher(ledger, poll_interval, self._foreign_commit)
        self._wake_callbacks: list[Callable[[bool], None]] = []
        self._cancel_listeners: list[Callable[[str], None]] = []
        self._subscriptions: dict[Subscription, asyncio.Task[int]] = {}
        self._running: dict[Stoppable, asyncio.Event] = {}
        self._sync_threads = sync_threads
        self._sync_executor: ThreadPoolExecutor | None = None
        self.is_open = False

    async def open(self) -> None:
        if self.is_open:
            return
        await self.ledger.open(self.clock, self._committed)
        try:
            await self.dispatcher.open(await self.ledger.head())
        except BaseException:
            with contextlib.suppress(Exception):
                await self.ledger.close()
            raise
        self.is_open = True

    async def close(self) -> None:
        """Stop workers and subscriptions, commit what was handed over, deliver pending
        events, release the ledger."""
        if not self.is_open:
            return
        for worker, stopped in list(self._running.items()):
            worker.stop()
            await stopped.wait()
        for subscription, task in list(self._subscriptions.items()):
            subscription.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._watcher.stop()
        await self.dispatcher.close()  # reads what other connections wrote: first
        await self.ledger.close()
        if self._sync_executor is not None:
            self._sync_executor.shutdown(wait=False)
            self._sync_executor = None
        self.is_open = False

    def require_open(self) -> None:
        if not self.is_open:
            raise ContextClosed(
                "the evq context is not open: use `async with Context(path) as ctx:`")

    async def deploy(self) -> list[str]:
        """Record this process's definitions whose settings changed (`deploy` events)."""
        queues = self.registry.queues
        found = {name: records.Deployment(d.queue, settings_of(d, queues.get(d.queue)))
                 for name, d in self.registry.definitions.items()}
        return await self.ledger.deploy(found)

    # --- subscriptions -------------------------------------------------------------------
    def start(self, subscription: Subscription) -> asyncio.Task[int]:
        """Run a subscription (durable handler or replay) until it stops or the runtime
        closes."""
        self.require_open()
        task = asyncio.get_running_loop().create_task(subscription.run())
        self._subscriptions[subscription] = task
        task.add_done_callback(lambda _: self._subscriptions.pop(subscription, None))
        self.watch()
        return task

    async def flush_events(self) -> None:
        """Wait until every event committed so far has reached the handlers."""
        self.dispatcher.poke()
        await self.dispatcher.flush()

    def _committed(self, rows: Sequence[records.Committed]) -> None:
        self.dispatcher.committed(rows)
        for subscription in self._subscriptions:
            subscription.wake.set()
        if any(row.kind in _WAKING_KINDS for row in rows):
            self.wake_workers(foreign=False)

    def _foreign_commit(self) -> None:
        self.dispatcher.poke()
        for subscription in self._subscriptions:
            subscription.wake.set()
        self.wake_workers(foreign=True)

    def watch(self) -> None:
        """Start noticing other connections' commits, once something needs to know."""
        if self.is_open:
            self._watcher.start()

    # --- workers ---------------------------------------------------------------------------
    def wake_workers(self, foreign: bool) -> None:
        for callback in list(self._wake_callbacks):
            callback(foreign)

    def on_wake(self, callback: Callable[[bool], None]) -> Callable[[], None]:
        """Call `callback(foreign)` when jobs may have become claimable (`foreign`: the
        commit came from another connection); returns the function that stops it."""
        self._wake_callbacks.append(callback)
        self.watch()

        def remove() -> None:
            if callback in self._wake_callbacks:
                self._wake_callbacks.remove(callback)

        return remove

    def on_cancel(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call `listener(job_id)` when this process cancels or deletes a running job;
        returns the function that stops it (workers stop the job's handler)."""
        self._cancel_listeners.append(listener)
        return functools.partial(self._cancel_listeners.remove, listener)

    def stop_running(self, ended: Sequence[records.Stopped]) -> None:
        for stopped in ended:
            for listener in list(self._cancel_listeners) if stopped.was_running else ():
                listener(stopped.job_id)

    def worker_running(self, worker: Stoppable) -> Callable[[], None]:
        """Track a running worker so close() can stop it first; returns the 'done' call."""
        stopped = asyncio.Event()
        self._running[worker] = stopped

        def done() -> None:
            self._running.pop(worker, None)
            stopped.set()

        return done

    def sync_executor(self) -> ThreadPoolExecutor:
        """Threads for synchronous user code, so it never blocks the event loop."""
        if self._sync_executor is None:
            self._sync_executor = ThreadPoolExecutor(
                self._sync_threads, thread_name_prefix="evq-handler")
        return self._sync_executor
