"""The worker: claims due jobs in batches, runs their handlers with a concurrency limit,
keeps their leases alive, and reports each outcome through the group-committing writer.

A claim also rescues jobs whose lease ran out (in any process), so crashed workers' jobs
come back with no extra moving part. Stopping is graceful: no new claims, running jobs
get `grace` seconds, and those still running then are put back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import attrs

from . import attempts, codec, identity, outages, rescuing
from .attempts import Plan
from .awaiting import Later, call_in_loop
from .errors import (
    InvalidInput,
    LeaseLost,
    LedgerUnavailable,
)
from .hooks import HookRunner
from .jobs import Job, JobDefinition
from .ledger import records
from .logs import get_logger
from .outcomes import (
    Planned,
)
from .signals import stop_on_signals

if TYPE_CHECKING:
    from .runtime import Runtime

HOOK_LEASE = 30.0  # default seconds a hook's runner holds it between renewals
CANCEL_CHECK_EVERY = 0.05  # real seconds between checks for cancels made elsewhere
SEEN_EVERY = 10.0  # how often a worker renews its entry in the registry of live workers


@attrs.define(eq=False)
class _Running:
    claimed: records.Claimed
    held: records.Attempt
    lease: float
    lease_until: float
    task: asyncio.Task[None] | None = None
    reporting: bool = False
    job: Job | None = None
    is_async: bool = True
    cancelled: bool = False


class Worker:
    """Runs the jobs of `queues` (default: every queue with a handler in this process
    whose settings say run_on_startup, as they do unless configured otherwise).

    name: default, a stable name from the host and the queues, unique among live
    workers (see identity.py); chosen when run() starts. concurrency: handlers running
    at once. grace: seconds running jobs get to finish when the worker is stopped.
    batch_size: most jobs claimed per transaction.
    hook_lease: seconds an on_max_attempts_exhausted hook run here is held between
    renewals; a worker that dies mid-hook leaves it to another within that time.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        queues: Iterable[str] | None = None,
        concurrency: int = 10,
        name: str | None = None,
        grace: float = 30.0,
        batch_size: int = 100,
        hook_lease: float = HOOK_LEASE,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidInput(f"concurrency must be an integer >= 1, got {concurrency!r}")
        if isinstance(queues, str):
            queues = [q.strip() for q in queues.split(",") if q.strip()]
        self.runtime = runtime
        self.queues = None if queues is None else sorted(
            {codec.check_name(q, "queue") for q in queues})
        self.concurrency = concurrency
        # An explicit name is kept; the default one is chosen when run() starts (a
        # stable one: see identity.py). Until then, a name for this process alone.
        self._chosen_name = None if name is None else codec.check_name(name, "worker")
        self.name = self._chosen_name or identity.unique_name()
        self._announced = False
        self.grace = codec.check_delay(grace, "grace")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInput(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.batch_size = batch_size
        self.jobs_done = 0
        self._running: dict[str, _Running] = {}
        # Attempts whose lease was lost while their handler still runs, superseded by a
        # newer attempt of the same job: awaited at shutdown, never reported.
        self._superseded: set[_Running] = set()
        self._beat_wake = asyncio.Event()
        self._beat_period = float("inf")
        self._wake = asyncio.Event()
        self._stopping = False
        self._finished_since_claim = False
        # Claim into any free slot when new work may have arrived; when only a job
        # finished, wait until half the slots are free, so claims come in batches.
        self._new_work = True
        self._foreign_commit = False
        self._next_cancel_check = 0.0
        self._refill = max(1, min(self.batch_size, concurrency) // 2)
        self._log = get_logger("evq.worker").bind(worker=self.name)
        self.hook_lease = codec.check_delay(hook_lease, "hook_lease")
        if self.hook_lease <= 0:
            raise InvalidInput(f"hook_lease must be > 0 seconds, got {hook_lease!r}")
        self._hooks: HookRunner | None = None
        self._hooks_task: asyncio.Task[None] | None = None
        self._until_idle = False
        self._names: list[str] = []
        self._seen_at = float("-inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished: asyncio.Future[None] | None = None

    def stop(self) -> Later:
        """Ask the worker to stop: no new claims; running jobs finish within `grace`.
        A plain call (from any thread) only asks; `await worker.stop()` also waits until
        `run()` has finished (at once when awaited by one of this worker's own jobs,
        which the worker itself waits for)."""
        self._stopping = True
        call_in_loop(self._loop, self._wake.set)
        return Later(self._until_stopped)

    async def _until_stopped(self) -> None:
        finished = self._finished
        if finished is None or finished.done():
            return
        current = asyncio.current_task()
        if current is self._hooks_task or any(
                run.task is current for run in (*self._running.values(), *self._superseded)):
            return
        await asyncio.shield(finished)

    async def run(self, *, until_idle: bool = False, handle_signals: bool = False) -> int:
        """Serve jobs until stopped (or, with until_idle, until no job is due and none is
        running). Returns the number of jobs this call ran to an outcome. handle_signals:
        SIGINT and SIGTERM stop this worker, and every other worker and orchestrator of
        this event loop that asked for it too (see `evq.serve`)."""
        self._loop = asyncio.get_running_loop()
        self._finished = finished = self._loop.create_future()
        forget_signals = stop_on_signals(self.stop) if handle_signals else None
        try:
            return await self._serve(until_idle)
        finally:
            if forget_signals is not None:
                forget_signals()
            if self._announced:
                self._announced = False
                identity.live_here.discard(self.name)
            finished.set_result(None)

    async def _serve(self, until_idle: bool) -> int:
        runtime = self.runtime
        on_startup = {name for name, q in runtime.registry.queues.items() if q.run_on_startup}
        definitions = {
            name: d for name, d in runtime.registry.definitions.items()
            if d.handler is not None and (
                d.queue in self.queues if self.queues is not None else d.queue in on_startup)
        }
        queues = self.queues or sorted({d.queue for d in definitions.values()})
        limits = {name: q.concurrency for name, q in runtime.registry.queues.items()
                  if q.concurrency is not None and name in queues}
        claim = records.ClaimRequest(
            worker="", queues=tuple(queues), names=tuple(sorted(definitions)), limit=0,
            lease_for={name: d.lease for name, d in definitions.items()},
            queue_limits=limits,
            run_later=frozenset(n for n, d in definitions.items() if d.okay_to_run))
        requests: dict[tuple[int, bool], records.ClaimRequest] = {}
        self._stopping = False
        start_count = self.jobs_done
        storage = outages.Backoff()
        await self._announce(queues, sorted(definitions))
        remove_wake = runtime.on_wake(self._on_new_work)
        remove_cancel = runtime.on_cancel(self._on_cancel)
        done = runtime.worker_running(self)
        heartbeats = asyncio.get_running_loop().create_task(self._heartbeats())
        self._log.info("evq.worker_started", queues=queues, concurrency=self.concurrency)
        self._until_idle = until_idle
        if any(d.on_max_attempts_exhausted for d in runtime.registry.definitions.values()):
            self._hooks = HookRunner(runtime, self.name, self.hook_lease, self._log)
            self._start_hooks()  # hooks left due, or leased by a runner that died
        try:
            while not self._stopping:
                self._wake.clear()
                if (self._foreign_commit and self._running
                        and time.monotonic() >= self._next_cancel_check):
                    await self._check_cancelled()
                free = self.concurrency - len(self._running) - len(self._superseded)
                claimed: list[records.Claimed] = []
                next_at: float | None = None
                if free > 0 and (self._new_work or free >= self._refill or not self._running):
                    self._new_work = False
                    self._finished_since_claim = False
                    try:
                        see = runtime.clock.now() - self._seen_at >= SEEN_EVERY
                        limit = min(free, self.batch_size)
                        request = requests.get((limit, see))
                        if request is None:  # a few shapes recur: built once each
                            request = requests[limit, see] = attrs.evolve(
                                claim, worker=self.name, limit=limit,
                                see_names=tuple(self._names) if see else None)
                        taken = await runtime.ledger.claim(request)
                    except LedgerUnavailable as exc:
                        # Nothing was claimed; what runs here keeps running. Try again.
                        delay = storage.after(exc)
                        outages.log_failure(self._log, exc, "claim", delay)
                        self._new_work = True
                        await self._wait(runtime.clock.now() + delay)
                        continue
                    storage.reset()
                    claimed, next_at, expired = taken.claimed, taken.next_at, taken.expired
                    if see:
                        self._seen_at = taken.at
                    for job in claimed:
                        self._start(job, definitions[job.name])
                    if expired:
                        try:
                            if rescued := await rescuing.rescue(runtime, expired, self.name):
                                self._log.info("evq.jobs_rescued", jobs=rescued)
                        except LedgerUnavailable as exc:  # found again at the next claim
                            outages.log_failure(self._log, exc, "rescue", 0.0)
                        self._new_work = True
                        continue
                    if len(claimed) == min(free, self.batch_size) and free > len(claimed):
                        continue
                if (until_idle and not claimed and not self._running
                        and not self._finished_since_claim):
                    break
                if until_idle and next_at is not None and not self._running:
                    next_at = None if next_at > runtime.clock.now() else next_at
                await self._wait(next_at if free > len(claimed) else None)
                if next_at is not None and runtime.clock.now() >= next_at:
                    self._new_work = True
        finally:
            remove_wake()
            remove_cancel()
            await self._finish_running()
            with contextlib.suppress(Exception):
                await runtime.ledger.forget_worker(self.name)
            await self._stop_hooks()
            heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeats
            self._log.info("evq.worker_stopped", jobs=self.jobs_done - start_count)
            done()
        return self.jobs_done - start_count

    async def _announce(self, queues: list[str], names: list[str]) -> None:
        """Say in the ledger that this worker is alive and what it runs, under its name
        (the default one chosen now: see identity.py), and, where its queues ask for it,
        take back what the previous worker of this name, now gone, was running."""
        self._names = names
        restart = [q for q in queues
                   if (settings := self.runtime.registry.queues.get(q)) is not None
                   and settings.retry_jobs_running_before_restart]
        candidates = [self._chosen_name] if self._chosen_name else list(
            identity.default_names(queues))
        taken: list[str] = []

        def taking(name: str) -> None:
            # Before the commit: a worker announced next in the same batch must not take
            # this name too.
            identity.live_here.add(name)
            taken.append(name)

        announce = records.Announce(
            candidates=tuple(candidates), chosen=self._chosen_name, names=tuple(names),
            restart_queues=tuple(restart), holder_gone=identity.holder_gone, taking=taking)
        try:
            announced = await outages.until_written(
                self.runtime.clock, self._log, "announce",
                lambda: self.runtime.ledger.announce_worker(announce))
        finally:
            for name_tried in taken:
                identity.live_here.discard(name_tried)
        name, released = announced.name, announced.released
        self._seen_at = announced.at
        identity.live_here.add(name)
        self._announced = True
        self.name = name
        self._log = get_logger("evq.worker").bind(worker=name)
        if released:
            self._log.info("evq.jobs_released_after_restart", jobs=len(released))

    def _on_cancel(self, job_id: str) -> None:
        """A job this worker may be running was cancelled: stop it."""
        run = self._running.get(job_id)
        if run is not None:
            self._stop_run(run)

    @staticmethod
    def _stop_run(run: _Running) -> None:
        if run.cancelled or run.reporting:
            return
        run.cancelled = True
        if run.job is not None:
            run.job.cancel_requested = True
        if run.is_async and run.task is not None:
            run.task.cancel()

    async def _check_cancelled(self) -> None:
        """Another process may have cancelled jobs running here (its commit woke us).
        Cancels made in this process arrive directly."""
        # The file watcher cannot tell this process's own commits from others', so at a
        # steady rate of commits this would run on every one: at most every 50 ms.
        self._foreign_commit = False
        self._next_cancel_check = time.monotonic() + CANCEL_CHECK_EVERY
        # Through the writer: it joins the batch already going (a read connection would
        # add a third thread competing for the GIL).
        try:
            cancelled = await self.runtime.ledger.cancelled_among(list(self._running))
        except LedgerUnavailable as exc:  # looked at again after the next foreign commit
            self._foreign_commit = True
            outages.log_failure(self._log, exc, "check_cancelled", CANCEL_CHECK_EVERY)
            return
        for job_id in cancelled:
            self._on_cancel(job_id)

    def _on_new_work(self, foreign: bool) -> None:
        self._new_work = True
        self._foreign_commit = self._foreign_commit or foreign
        self._wake.set()

    async def _wait(self, next_at: float | None) -> None:
        if self._wake.is_set():
            return
        clock = self.runtime.clock
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wake.wait())]
        if next_at is not None:
            delay = next_at - clock.now()
            if delay <= 0:
                waiters[0].cancel()
                return
            waiters.append(asyncio.ensure_future(clock.sleep(delay)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    # --- running one job ---------------------------------------------------------------
    def _start(self, claimed: records.Claimed, definition: JobDefinition[Any]) -> None:
        held = records.Attempt(claimed.id, claimed.queue, claimed.name, claimed.attempt, self.name)
        run = _Running(claimed, held, definition.lease, claimed.lease_until)
        previous = self._running.get(claimed.id)
        if previous is not None:
            # The older attempt lost its lease (it was rescued and claimed again here):
            # its handler is stopped if it can be, and its outcome would be refused.
            self._stop_run(previous)
            self._superseded.add(previous)
        self._running[claimed.id] = run
        if run.lease / 3 < self._beat_period:
            self._beat_wake.set()  # the heartbeat task sleeps longer than this lease allows
        run.task = asyncio.get_running_loop().create_task(self._execute(run, definition))

    async def _execute(self, run: _Running, definition: JobDefinition[Any]) -> None:
        claimed = run.claimed
        log = self._log.bind(job_id=claimed.id, queue=claimed.queue, job=claimed.name,
                             attempt=claimed.attempt)
        job = Job(claimed.id, claimed.name, claimed.queue, claimed.attempt, claimed.errors,
                  claimed.max_attempts, claimed.priority,
                  codec.stored_datetime(claimed.enqueued_at) or codec.FIRST_DATETIME,
                  claimed.payload, self.name, log, children=claimed.children)
        run.job = job
        run.is_async = definition.is_async
        try:
            try:
                plan = await attempts.outcome(self.runtime, self.name, definition, job, log)
            except asyncio.CancelledError:
                if run.cancelled:  # the job was cancelled: the ledger already says so
                    log.info("evq.job_cancelled")
                    return
                # Stopped past its grace period: hand the job back now, not at lease end
                # (or, if the ledger cannot take it now, when the lease runs out).
                await self._report(run, [Planned("requeue", {"reason": "worker_stopped"},
                                                 due_in=0.0)], log, persist=False)
                raise
            expired_with_hook = await self._report(run, plan, log)
            self.jobs_done += 1
            if expired_with_hook:
                self._start_hooks()
        finally:
            # Only now is the slot free: the outcome is committed (or refused).
            if self._running.get(claimed.id) is run:
                del self._running[claimed.id]
            self._superseded.discard(run)
            self._finished_since_claim = True
            self._wake.set()

    async def _report(self, run: _Running, plan: Plan, log: Any, *, persist: bool = True
                      ) -> bool:
        """Commit the attempt's outcome; True if it expired the job with a hook due.
        Held until the ledger takes it (a full disk delays an outcome, never drops it),
        unless not `persist`: then a storage failure is logged and the lease decides."""
        run.reporting = True
        try:
            planned = await outages.until_written(
                self.runtime.clock, log, "report",
                lambda: self.runtime.ledger.report(run.held, plan),
                give_up=lambda: not persist)
        except LedgerUnavailable as exc:
            outages.log_failure(log, exc, "report", 0.0)
            return False
        except LeaseLost as exc:
            if run.cancelled:
                log.info("evq.job_cancelled", note="the handler finished after the cancel")
            else:
                log.warning("evq.lease_lost", error=str(exc))
            return False
        return any(step.kind == "expire" and step.data.get("hook") for step in planned)

    # --- the exhausted-attempts hooks (run by hooks.HookRunner) --------------------------
    def _start_hooks(self) -> None:
        """Start the hook runner (serving: it runs hooks as they become due; draining:
        the ones due now), or poke it: a hook may have become due."""
        if self._hooks is None:
            return
        if self._hooks_task is None or self._hooks_task.done():
            self._hooks_task = asyncio.get_running_loop().create_task(
                self._hooks.run(until_idle=self._until_idle))
        else:
            self._hooks.poke()

    async def _stop_hooks(self) -> None:
        """The hook running, if any, gets `grace` seconds; cut short, it stays leased
        and another worker takes it once the lease runs out."""
        task = self._hooks_task
        if self._hooks is None or task is None:
            return
        self._hooks.stop()
        _, pending = await asyncio.wait([task], timeout=self.grace)
        for late in pending:
            late.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _heartbeats(self) -> None:
        clock = self.runtime.clock
        storage = outages.Backoff()
        retry_in = float("inf")  # after a renewal the ledger could not take
        while True:
            self._beat_wake.clear()
            self._beat_period = min((r.lease / 3 for r in self._running.values()),
                                    default=float("inf"))
            waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._beat_wake.wait())]
            if min(self._beat_period, retry_in) != float("inf"):
                waiters.append(asyncio.ensure_future(clock.sleep(
                    min(self._beat_period, retry_in))))
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            now = clock.now()
            due = [r for r in self._running.values()
                   if not r.reporting and r.lease_until - now < r.lease * 2 / 3]
            retry_in = float("inf")
            if due:
                try:
                    renewed = await self.runtime.ledger.heartbeat(
                        [records.Beat(run.held, run.lease) for run in due])
                except LedgerUnavailable as exc:
                    retry_in = storage.after(exc)
                    outages.log_failure(self._log, exc, "heartbeat", retry_in)
                    continue
                storage.reset()
                lost = []
                for run, lease_until in zip(due, renewed, strict=True):
                    if lease_until is None:
                        lost.append(run)
                    else:
                        run.lease_until = lease_until
                for run in lost:
                    # Rescued or cancelled elsewhere: this attempt is over, stop its handler.
                    self._log.warning("evq.lease_lost", job_id=run.held.job_id,
                                      attempt=run.held.attempt)
                    self._stop_run(run)

    async def _finish_running(self) -> None:
        runs = [*self._running.values(), *self._superseded]
        tasks = [r.task for r in runs if r.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
