"""The worker: claims due jobs in batches, runs their handlers with a concurrency limit,
keeps their leases alive, and reports each outcome through the group-committing writer.

A claim also rescues jobs whose lease ran out (in any process), so crashed workers' jobs
come back with no extra moving part. Stopping is graceful: no new claims, running jobs
get `grace` seconds, and those still running then are put back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs

from . import codec
from .errors import InvalidInput, InvalidPayload, LeaseLost, UnrecoverableError
from .jobs import Job, JobDefinition
from .ledger import maintenance, ops
from .ledger.tx import Tx
from .logs import get_logger
from .outcomes import EXHAUSTED_HOOK, Planned, RetryPolicy, after_failure, describe_error
from .retry import Fixed

if TYPE_CHECKING:
    from .context import Context

_counter = itertools.count(1)
HOOK_LEASE = 300.0
CANCEL_CHECK_EVERY = 0.05  # real seconds between checks for cancels made elsewhere
SEEN_EVERY = 10.0  # how often a worker renews its entry in the registry of live workers
Plan = Callable[[float], list[Planned]]


def default_worker_name() -> str:
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())
    return f"{host or 'host'}:{os.getpid()}:{next(_counter)}"


@attrs.define(eq=False)
class _Running:
    claimed: ops.Claimed
    held: ops.Attempt
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

    concurrency: handlers running at once. grace: seconds running jobs get to finish
    when the worker is stopped. batch_size: most jobs claimed per transaction.
    """

    def __init__(
        self,
        ctx: Context,
        *,
        queues: Iterable[str] | None = None,
        concurrency: int = 10,
        name: str | None = None,
        grace: float = 30.0,
        batch_size: int = 100,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidInput(f"concurrency must be an integer >= 1, got {concurrency!r}")
        if isinstance(queues, str):
            queues = [q.strip() for q in queues.split(",") if q.strip()]
        self.ctx = ctx
        self.queues = None if queues is None else sorted(
            {codec.check_name(q, "queue") for q in queues})
        self.concurrency = concurrency
        self.name = codec.check_name(name or default_worker_name(), "worker")
        self.grace = codec.check_delay(grace, "grace")
        self.batch_size = max(1, int(batch_size))
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
        self._hooks_task: asyncio.Task[None] | None = None
        self._names: list[str] = []
        self._seen_at = float("-inf")
        self._hooks_again = False

    def stop(self) -> None:
        """Ask the worker to stop: no new claims; running jobs finish within `grace`."""
        self._stopping = True
        self._wake.set()

    @property
    def running(self) -> int:
        return len(self._running)

    async def run(self, *, until_idle: bool = False, handle_signals: bool = False) -> int:
        """Serve jobs until stopped (or, with until_idle, until no job is due and none is
        running). Returns the number of jobs this call ran to an outcome."""
        ctx = self.ctx
        on_startup = {name for name, q in ctx.queues.items() if q.run_on_startup}
        definitions = {
            name: d for name, d in ctx.definitions.items()
            if d.handler is not None and (
                d.queue in self.queues if self.queues is not None else d.queue in on_startup)
        }
        queues = self.queues or sorted({d.queue for d in definitions.values()})
        limits = {name: q.concurrency for name, q in ctx.queues.items()
                  if q.concurrency is not None and name in queues}
        claim = functools.partial(
            self._claim_op, queues=queues, queue_limits=limits,
            queues_json=json.dumps(queues),
            names_json=json.dumps(sorted(definitions)),
            lease_for=lambda name: definitions[name].lease)
        self._stopping = False
        start_count = self.jobs_done
        await self._announce(queues, sorted(definitions))
        remove_wake = ctx.on_wake(self._on_new_work)
        ctx._cancel_listeners.append(self._on_cancel)
        done = ctx.worker_running(self)
        signals = self._install_signals() if handle_signals else []
        heartbeats = asyncio.get_running_loop().create_task(self._heartbeats())
        self._log.info("evq.worker_started", queues=queues, concurrency=self.concurrency)
        if any(d.on_max_attempts_exhausted for d in definitions.values()):
            self._start_hooks()  # hooks left due by a process that died
        try:
            while not self._stopping:
                self._wake.clear()
                if (self._foreign_commit and self._running
                        and time.monotonic() >= self._next_cancel_check):
                    await self._check_cancelled()
                free = self.concurrency - len(self._running) - len(self._superseded)
                claimed: list[ops.Claimed] = []
                next_at: float | None = None
                if free > 0 and (self._new_work or free >= self._refill or not self._running):
                    self._new_work = False
                    self._finished_since_claim = False
                    claimed, next_at = await ctx.writer.run(
                        functools.partial(claim, limit=min(free, self.batch_size)))
                    for job in claimed:
                        self._start(job, definitions[job.name])
                    if len(claimed) == min(free, self.batch_size) and free > len(claimed):
                        continue
                if (until_idle and not claimed and not self._running
                        and not self._finished_since_claim):
                    break
                if until_idle and next_at is not None and not self._running:
                    next_at = None if next_at > ctx.clock.now() else next_at
                await self._wait(next_at if free > len(claimed) else None)
                if next_at is not None and ctx.clock.now() >= next_at:
                    self._new_work = True
        finally:
            for sig in signals:
                asyncio.get_running_loop().remove_signal_handler(sig)
            remove_wake()
            ctx._cancel_listeners.remove(self._on_cancel)
            await self._finish_running()
            with contextlib.suppress(Exception):
                await ctx.writer.run(functools.partial(maintenance.forget_worker,
                                                       name=self.name))
            if self._hooks_task is not None:
                await asyncio.wait([self._hooks_task], timeout=self.grace)
            heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeats
            self._log.info("evq.worker_stopped", jobs=self.jobs_done - start_count)
            done()
        return self.jobs_done - start_count

    async def _announce(self, queues: list[str], names: list[str]) -> None:
        """Say in the ledger that this worker is alive and what it runs, and, where its
        queues ask for it, take back what a previous worker of this name was running."""
        self._names = names
        restart = [q for q in queues
                   if (settings := self.ctx.queues.get(q)) is not None
                   and settings.retry_jobs_running_before_restart]

        def op(tx: Tx) -> list[str]:
            maintenance.see_worker(tx, self.name, names)
            self._seen_at = tx.now
            return ops.release_previous(tx, self.name, json.dumps(restart)) if restart else []

        released = await self.ctx.writer.run(op)
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
        for job_id in await self.ctx.writer.run(functools.partial(
                ops.cancelled_among, job_ids_json=json.dumps(sorted(self._running)))):
            self._on_cancel(job_id)

    def _on_new_work(self, foreign: bool) -> None:
        self._new_work = True
        self._foreign_commit = self._foreign_commit or foreign
        self._wake.set()

    def _install_signals(self) -> list[signal.Signals]:
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
                installed.append(sig)
        return installed

    async def _wait(self, next_at: float | None) -> None:
        if self._wake.is_set():
            return
        clock = self.ctx.clock
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

    # --- operations run inside the writer's transaction ---------------------------------
    def _claim_op(self, tx: Tx, *, queues: list[str], queue_limits: dict[str, int],
                  queues_json: str, names_json: str, limit: int,
                  lease_for: Callable[[str], float]
                  ) -> tuple[list[ops.Claimed], float | None]:
        ops.rescue_expired(tx, self.ctx.retry_policy, self.name)
        if tx.now - self._seen_at >= SEEN_EVERY:
            maintenance.see_worker(tx, self.name, self._names)
            self._seen_at = tx.now
        claimed = ops.claim(tx, queues, names_json, limit, self.name, lease_for, queue_limits)
        if len(claimed) == limit:
            return claimed, None
        # Due jobs that could not be taken (paused queue, limit reached, group busy) wait
        # for a commit that frees them, which wakes the worker; only future times count.
        candidates = [t for t in (ops.next_due(tx, queues_json, names_json),
                                  ops.next_lease_expiry(tx)) if t is not None and t > tx.now]
        return claimed, min(candidates) if candidates else None

    @staticmethod
    def _report_op(tx: Tx, *, held: ops.Attempt, plan: Plan) -> list[Planned]:
        planned = plan(tx.now)
        ops.report(tx, held, planned)
        return planned

    @staticmethod
    def _heartbeat_op(tx: Tx, *, runs: list[_Running]) -> list[_Running]:
        lost = []
        for run in runs:
            lease_until = tx.now + run.lease
            try:
                ops.report(tx, run.held, [Planned("heartbeat", {"lease_until": lease_until})])
            except LeaseLost:
                lost.append(run)
            else:
                run.lease_until = lease_until
        return lost

    # --- running one job ---------------------------------------------------------------
    def _start(self, claimed: ops.Claimed, definition: JobDefinition[Any]) -> None:
        held = ops.Attempt(claimed.id, claimed.queue, claimed.name, claimed.attempt, self.name)
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
                plan = await self._call(definition, job, log)
            except asyncio.CancelledError:
                if run.cancelled:  # the job was cancelled: the ledger already says so
                    log.info("evq.job_cancelled")
                    return
                # Stopped past its grace period: hand the job back now, not at lease end.
                await self._report(run, lambda now: [Planned(
                    "requeue", {"reason": "worker_stopped", "run_at": now})], log)
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

    async def _call(self, definition: JobDefinition[Any], job: Job, log: Any) -> Plan:
        policy = definition.retry_policy
        errors = job.errors
        try:
            payload = codec.decode_as(definition.payload_type, job.payload)
            job.payload = payload
            if definition.okay_to_run is not None and not await self._maybe_await(
                    definition.okay_to_run, payload, job):
                delay = definition.requeue_delay
                log.info("evq.job_deferred", delay=delay)
                return lambda now: [Planned("defer", {"reason": "okay_to_run", "delay": delay,
                                                      "run_at": codec.clamp_time(now + delay)})]
            args = (payload, job)[: definition.handler_arity]
            assert definition.handler is not None
            if definition.is_async:
                pending = definition.handler(*args)
            else:
                pending = asyncio.get_running_loop().run_in_executor(
                    self.ctx.sync_executor(), functools.partial(definition.handler, *args))
            if definition.timeout is not None:
                result = await asyncio.wait_for(pending, definition.timeout)
            else:
                result = await pending
        except UnrecoverableError as exc:
            log.warning("evq.job_failed", error=repr(exc))
            error = describe_error(exc)
            return lambda now: after_failure("error", error, errors, policy, now, retryable=False)
        except (TimeoutError, Exception) as exc:
            log.warning("evq.job_error", error=repr(exc))
            error = describe_error(exc)
            return lambda now: after_failure("error", error, errors, policy, now)
        chosen = job.outcome or Planned("success", {"result": result})
        return self._plan_outcome(chosen, errors, policy, log, definition.failure_delay)

    async def _maybe_await(self, check: Callable[..., Any], *args: Any) -> Any:
        """Call a hook that may be async, or sync (then in a thread, off the loop)."""
        if inspect.iscoroutinefunction(check):
            return await check(*args)
        return await asyncio.get_running_loop().run_in_executor(
            self.ctx.sync_executor(), functools.partial(check, *args))

    def _plan_outcome(self, chosen: Planned, errors: int, policy: Any, log: Any,
                      failure_delay: float | None = None) -> Plan:
        data = dict(chosen.data)
        if chosen.kind == "success":
            try:
                data["result"] = codec.encode(data["result"], "result",
                                              self.ctx.max_payload_bytes)
            except InvalidPayload as exc:
                log.warning("evq.bad_result", error=str(exc))
                error = describe_error(exc)
                return lambda now: after_failure("error", error, errors, policy, now,
                                                 retryable=False)
            log.debug("evq.job_succeeded")
            return lambda now: [Planned("success", data)]
        if chosen.kind == "requeue":
            delay = data.pop("delay")
            return lambda now: [Planned("requeue", {**data,
                                                    "run_at": codec.clamp_time(now + delay)})]
        if chosen.kind == "fail" and failure_delay is not None:
            # Joystick's requeue_on_failure: a failed attempt comes back after the delay.
            retry = RetryPolicy(policy.max_attempts, Fixed(failure_delay), policy.exhausted_hook)
            return lambda now: after_failure("error", data["error"], errors, retry, now)
        if chosen.kind == "fail":
            return lambda now: [Planned("error", {"error": data["error"], "errors": errors + 1,
                                                  "retry_at": None}),
                                Planned("fail", {"reason": "handler"})]
        return lambda now: [Planned(chosen.kind, data)]

    async def _report(self, run: _Running, plan: Plan, log: Any) -> bool:
        """Commit the attempt's outcome; True if it expired the job with a hook due."""
        run.reporting = True
        try:
            planned = await self.ctx.writer.run(
                functools.partial(self._report_op, held=run.held, plan=plan))
        except LeaseLost as exc:
            if run.cancelled:
                log.info("evq.job_cancelled", note="the handler finished after the cancel")
            else:
                log.warning("evq.lease_lost", error=str(exc))
            return False
        return any(step.kind == "expire" and step.data.get("hook") for step in planned)

    # --- the exhausted-attempts hook ----------------------------------------------------
    def _start_hooks(self) -> None:
        if self._hooks_task is None or self._hooks_task.done():
            self._hooks_task = asyncio.get_running_loop().create_task(self._run_hooks())
        else:
            self._hooks_again = True

    async def _run_hooks(self) -> None:
        """Run the due on_max_attempts_exhausted hooks of the jobs this worker knows.
        Each run is recorded (`hook` started, then done or failed) under a lease, so a
        hook is never lost and, once done, never run again."""
        from .jobs import JobRecord

        names = json.dumps(sorted(n for n, d in self.ctx.definitions.items()
                                  if d.on_max_attempts_exhausted is not None))
        self._hooks_again = True
        while self._hooks_again:
            self._hooks_again = False
            rows = await self.ctx.writer.run(functools.partial(
                ops.start_hooks, names_json=names, worker=self.name, lease=HOOK_LEASE,
                limit=100))
            for row in rows:
                record = JobRecord.from_row(row)
                hook = self.ctx.definitions[record.name].on_max_attempts_exhausted
                assert hook is not None
                log = self._log.bind(job_id=record.id, queue=record.queue, job=record.name,
                                     hook=EXHAUSTED_HOOK)
                error = None
                try:
                    await self._maybe_await(hook, record)
                except Exception as exc:
                    log.error("evq.hook_failed", error=repr(exc))
                    error = describe_error(exc)
                await self.ctx.writer.run(functools.partial(
                    ops.finish_hook, job_id=record.id, queue=record.queue, name=record.name,
                    attempt=record.attempt, worker=self.name, error=error))

    async def _heartbeats(self) -> None:
        clock = self.ctx.clock
        while True:
            self._beat_wake.clear()
            self._beat_period = min((r.lease / 3 for r in self._running.values()),
                                    default=float("inf"))
            waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._beat_wake.wait())]
            if self._beat_period != float("inf"):
                waiters.append(asyncio.ensure_future(clock.sleep(self._beat_period)))
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            now = clock.now()
            due = [r for r in self._running.values()
                   if not r.reporting and r.lease_until - now < r.lease * 2 / 3]
            if due:
                lost = await self.ctx.writer.run(functools.partial(self._heartbeat_op, runs=due))
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
