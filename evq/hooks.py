"""Running the exhausted-attempts hooks (`on_max_attempts_exhausted`) for a worker.

A hook is taken one at a time, as it starts (a `hook` event with status started, under
a lease of `lease` seconds), its lease is renewed while it runs (status renewed), and its
end is recorded (done or failed) only by the runner that still holds it. A runner that
dies leaves its hook started until the lease runs out; then any live worker of the
ledger that knows the job takes it: workers look again when their lease clock says one
ran out, and when a commit (of any process) may have made a hook due.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import time
from typing import TYPE_CHECKING, Any

from . import outages
from .errors import LeaseLost, LedgerUnavailable
from .jobs import JobRecord
from .ledger import records
from .outcomes import EXHAUSTED_HOOK, describe_error

if TYPE_CHECKING:
    from .runtime import Runtime

CHECK_EVERY = 0.05  # real seconds: at most this often does a commit elsewhere cause a look


class HookRunner:
    """Takes and runs the hooks of every job name defined with one in `ctx`."""

    def __init__(self, runtime: Runtime, worker: str, lease: float, log: Any) -> None:
        self.runtime = runtime
        self.worker = worker
        self.lease = lease
        self._log = log
        self._names = sorted(name for name, d in runtime.registry.definitions.items()
                             if d.on_max_attempts_exhausted is not None)
        self._wake = asyncio.Event()
        self._poked = False
        self._stopping = False
        self._checked_at = float("-inf")

    def poke(self) -> None:
        """A hook may have become due: look again."""
        self._poked = True
        self._wake.set()

    def stop(self) -> None:
        """Take no more hooks (the one running, if any, still finishes)."""
        self._stopping = True
        self._wake.set()

    async def run(self, *, until_idle: bool = False) -> None:
        """Run hooks as they become due, until stopped; with until_idle, until none is
        due (and nothing poked meanwhile)."""
        remove_wake = None if until_idle else self.runtime.on_wake(lambda foreign: self.poke())
        try:
            while not self._stopping:
                self._poked = False
                self._wake.clear()
                try:
                    record, next_at = await self.runtime.ledger.take_hook(
                        self._names, self.worker, self.lease)
                except Exception as exc:  # storage trouble: look again on the next wake
                    self._log.error("evq.hooks_look_failed", error=repr(exc))
                    record, next_at = None, None
                    if until_idle:
                        return
                self._checked_at = time.monotonic()
                if record is not None:
                    await self._run_one(record)
                    continue
                if until_idle:
                    if self._poked:
                        continue
                    return
                await self._wait(next_at)
        finally:
            if remove_wake is not None:
                remove_wake()

    async def _wait(self, next_at: float | None) -> None:
        clock = self.runtime.clock
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wake.wait())]
        if next_at is not None:
            waiters.append(asyncio.ensure_future(clock.sleep(max(0.0, next_at - clock.now()))))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        # Commits come in streams: look at most every CHECK_EVERY for their sake.
        rest = self._checked_at + CHECK_EVERY - time.monotonic()
        if self._wake.is_set() and rest > 0 and not self._stopping:
            await asyncio.sleep(rest)

    async def _run_one(self, record: JobRecord) -> None:
        definition = self.runtime.registry.definitions[record.name]
        hook = definition.on_max_attempts_exhausted
        assert hook is not None
        log = self._log.bind(job_id=record.id, queue=record.queue, job=record.name,
                             hook=EXHAUSTED_HOOK)
        renewing = asyncio.get_running_loop().create_task(self._renew(record, log))
        error = None
        try:
            if inspect.iscoroutinefunction(hook):
                await hook(record)
            else:
                await asyncio.get_running_loop().run_in_executor(
                    self.runtime.sync_executor(), functools.partial(hook, record))
        except Exception as exc:
            log.error("evq.hook_failed", error=repr(exc))
            error = describe_error(exc)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        held = self._held(record)
        try:  # a full disk only delays the outcome: it is written once the disk takes it
            await outages.until_written(self.runtime.clock, log, "hook outcome",
                                        lambda: self.runtime.ledger.finish_hook(held, error))
        except LeaseLost:
            log.warning("evq.hook_lease_lost",
                        note="another worker took the hook over; its outcome is recorded")

    def _held(self, record: JobRecord) -> records.Attempt:
        return records.Attempt(record.id, record.queue, record.name, record.attempt,
                               self.worker)

    async def _renew(self, record: JobRecord, log: Any) -> None:
        """Keep the hook's lease while it runs: renewed at a third of the lease."""
        while True:
            await self.runtime.clock.sleep(self.lease / 3)
            try:
                await self.runtime.ledger.renew_hook(self._held(record), self.lease)
            except LeaseLost:
                log.warning("evq.hook_lease_lost",
                            note="the hook ran past its lease and another worker took it")
                return
            except LedgerUnavailable as exc:  # try again at the next third of the lease
                log.warning("evq.storage_error", doing="hook lease", error=str(exc))
