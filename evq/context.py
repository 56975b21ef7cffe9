"""The Context: the facade users hold. One ledger opened by this process, with the job
definitions registered on it (the Registry), the runtime its workers and orchestrators
share (the Runtime), enqueueing, reading jobs back, and event subscriptions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from queue import SimpleQueue
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import codec, enqueueing, files, flows
from .clock import Clock, SystemClock
from .durable import Subscription
from .enqueueing import EnqueueRequest
from .errors import InvalidInput, InvalidTime, UnknownJob
from .events import TERMINAL_KINDS, Event
from .jobs import DEFAULT_QUEUE, Handler, JobDefinition, JobRecord
from .ledger import Ledger, open_ledger, records
from .ledger.records import Durability
from .queues import Queue
from .registry import Registry
from .retry import Backoff
from .runtime import Runtime
from .subscribers import EventFilter, EventHandler, Subscriber

if TYPE_CHECKING:
    from .orchestrator import Orchestrator
    from .producer import SyncProducer
    from .worker import Worker


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{what} must be an integer >= 1, got {value!r}")
    return value


def _positive_seconds(value: object, what: str) -> float:
    seconds = codec.check_delay(value, what)
    if seconds <= 0:
        raise InvalidInput(f"{what} must be a number of seconds > 0, got {value!r}")
    return seconds


class Context:
    """An open evq ledger. Use it as `async with Context("jobs.db") as ctx:`.

    durability: "process" (default; survives any process crash) or "power" (also power
    loss). poll_interval: how often, in seconds, this process looks for commits made by
    other processes (workers in this process wake at once on its own enqueues).
    file_mode: the permissions of a ledger file this context creates (0600 by default:
    it holds payloads; its -wal and -shm take the same mode). An existing file keeps its
    own.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock | None = None,
        durability: Durability | str = Durability.PROCESS,
        max_payload_bytes: int = codec.DEFAULT_MAX_PAYLOAD_BYTES,
        poll_interval: float = 0.005,
        busy_timeout: float = 10.0,
        sync_handler_threads: int = 8,
        file_mode: int = files.FILE_MODE,
    ) -> None:
        self.path = Path(path)
        if clock is not None and not (callable(getattr(clock, "now", None))
                                      and callable(getattr(clock, "sleep", None))):
            raise InvalidInput(f"clock must have now() and async sleep(seconds), as "
                               f"evq.SystemClock and evq.FakeClock do; got {clock!r:.80}")
        self.file_mode = files.check_mode(file_mode)
        self.clock: Clock = clock or SystemClock()
        try:
            self.durability = Durability(durability)
        except ValueError:
            raise InvalidInput(
                f"durability must be 'process' or 'power', got {durability!r}") from None
        self.max_payload_bytes = _positive_int(max_payload_bytes, "max_payload_bytes")
        self.poll_interval = _positive_seconds(poll_interval, "poll_interval")
        self.busy_timeout = _positive_seconds(busy_timeout, "busy_timeout")
        self._busy_timeout_ms = int(self.busy_timeout * 1000)
        self.ledger: Ledger = open_ledger(path, busy_timeout=self.busy_timeout,
                                          durability=self.durability,
                                          file_mode=self.file_mode)
        # Where the ledger is, as people are shown it: a file path, or a PostgreSQL URL
        # with its password replaced. `path` is the file of a SQLite ledger.
        self.location: str = self.ledger.location
        self.path = Path(self.ledger.location)
        self.registry = Registry(self.clock, self.max_payload_bytes, self)
        self.runtime = Runtime(
            self.ledger, self.clock, self.registry, poll_interval=self.poll_interval,
            sync_threads=_positive_int(sync_handler_threads, "sync_handler_threads"))

    # --- lifecycle ---------------------------------------------------------------------
    async def open(self) -> Context:
        """Open the ledger (creating or upgrading its schema). Raises the typed
        `LedgerError` that says why it cannot be used, having released everything."""
        await self.runtime.open()
        return self

    @property
    def busy_timeout_ms(self) -> int:
        """How long, in milliseconds, a write waits for another connection's lock."""
        return self._busy_timeout_ms

    async def close(self) -> None:
        """Stop this context's workers, commit what was handed over, deliver pending
        events, release the ledger."""
        await self.runtime.close()

    async def __aenter__(self) -> Context:
        return await self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # --- queues ------------------------------------------------------------------------
    def queue(self, name: str, **settings: Any) -> Queue:
        """Configure a queue in this process (see `evq.Queue` for the settings)."""
        return self.registry.queue(name, **settings)

    @property
    def queues(self) -> Mapping[str, Queue]:
        """Every queue this process knows: configured ones, and those its jobs use."""
        return self.registry.queues

    async def pause(self, queue: str, reason: str | None = None) -> None:
        """Stop every worker on the ledger from claiming this queue's jobs (running ones
        finish; nothing is lost). A `pause` event."""
        await self._set_paused(queue, True, reason)

    async def resume(self, queue: str, reason: str | None = None) -> None:
        """Let workers claim this queue's jobs again. A `resume` event."""
        await self._set_paused(queue, False, reason)

    async def _set_paused(self, queue: str, paused: bool, reason: str | None) -> None:
        codec.check_name(queue, "queue")
        await self.ledger.set_paused(queue, paused, reason)

    # --- definitions -------------------------------------------------------------------
    def job(
        self,
        name: str | None = None,
        *,
        queue: str = DEFAULT_QUEUE,
        payload_type: type | None = None,
        max_attempts: int | None = 3,
        backoff: Backoff | None = None,
        lease: float = 60.0,
        timeout: float | None = None,
        priority: int = 0,
        group: str | Callable[[Any], str | None] | None = None,
        **options: Any,
    ) -> Callable[[Handler], JobDefinition[Any]]:
        """Decorator: register the function as the handler of job `name` (default: the
        function's name). The handler takes (payload) or (payload, job). Other options
        (requeue_on_failure, on_before_add, okay_to_run, requeue_delay,
        on_max_attempts_exhausted) are those of `evq.JobDefinition`."""

        def register(handler: Handler) -> JobDefinition[Any]:
            return self.define(
                name or str(getattr(handler, "__name__", "")), handler, queue=queue,
                payload_type=payload_type, max_attempts=max_attempts, backoff=backoff,
                lease=lease, timeout=timeout, priority=priority, group=group, **options)

        return register

    def define(self, name: str, handler: Handler | None = None, **options: Any
               ) -> JobDefinition[Any]:
        """Register a job definition; `handler=None` for a producer-only process."""
        return self.registry.define(name, handler, **options)

    async def deploy(self) -> list[str]:
        """Record this process's job definitions in the ledger (cuckmq's deploy): a
        `deploy` event for each one that is new or changed. Other processes, the CLI and
        orchestrators then know which jobs and schedules exist. Returns the names."""
        return await self.runtime.deploy()

    def orchestrator(
        self,
        *,
        name: str | None = None,
        interval: float = 1.0,
        leader_lease: float = 10.0,
        orphan_after: float = 60.0,
        worker_ttl: float = 30.0,
        batch: int = 500,
        archive_to: str | Path | None = None,
        archive_after: float = 7 * 86400,
        archive_every: float = 3600.0,
    ) -> Orchestrator:
        """An Orchestrator on this context (see `evq.Orchestrator`): `name` (default
        orchestrator-host:pid:n), a round every `interval` seconds, leadership held for
        `leader_lease` seconds between renewals (so a dead leader is replaced within
        `leader_lease + interval`), a due job no live worker (seen within `worker_ttl`)
        can run reported as an orphan after `orphan_after`, at most `batch` cleanup
        deletes per round, and with `archive_to` a directory: every `archive_every`
        seconds the events of jobs deleted more than `archive_after` seconds ago are
        archived there."""
        from .orchestrator import Orchestrator

        return Orchestrator(
            self.runtime, name=name, interval=interval, leader_lease=leader_lease,
            orphan_after=orphan_after, worker_ttl=worker_ttl, batch=batch,
            archive_to=archive_to, archive_after=archive_after, archive_every=archive_every)

    @property
    def definitions(self) -> Mapping[str, JobDefinition[Any]]:
        return self.registry.definitions

    def definition(self, name: str) -> JobDefinition[Any]:
        return self.registry.definition(name)

    # --- enqueue -----------------------------------------------------------------------
    def prepare(
        self,
        job: str | JobDefinition[Any],
        payload: Any = None,
        *,
        delay: float | None = None,
        run_at: datetime | str | float | None = None,
        priority: int | None = None,
        key: str | None = None,
        group: str | None = None,
        now: float | None = None,
    ) -> records.NewJob:
        """Validate one job to enqueue. Raises a typed error; writes nothing."""
        return self.registry.prepare(job, payload, delay=delay, run_at=run_at,
                                     priority=priority, key=key, group=group, now=now)

    async def enqueue(
        self,
        job: str | JobDefinition[Any],
        payload: Any = None,
        *,
        delay: float | None = None,
        run_at: datetime | str | float | None = None,
        priority: int | None = None,
        key: str | None = None,
        group: str | None = None,
    ) -> str:
        """Add a job; returns its id once the enqueue event is committed.

        key: an idempotency key; while a job with this key is pending or running,
        enqueueing again adds nothing and returns that job's id. group: jobs sharing a
        group run one at a time, across every process on the ledger."""
        new = self.prepare(job, payload, delay=delay, run_at=run_at, priority=priority,
                           key=key, group=group)
        await self._preflight([new])
        ids = await self.ledger.enqueue((new,))
        return ids[0]

    async def _preflight(self, jobs: Sequence[records.NewJob]) -> None:
        """Ask each definition's on_before_add; if any refuses, record `reject` events
        for the refused ones, add nothing, and raise JobRejected."""
        reasons = await enqueueing.refusals(self.registry, jobs)
        if reasons:
            refused = [job for job in jobs if job.id in reasons]
            await self.ledger.reject(refused, reasons)
            raise enqueueing.rejected(jobs, reasons, "nothing was added")

    async def enqueue_many(self, requests: Iterable[EnqueueRequest | tuple[Any, ...]]
                           ) -> list[str]:
        """Add many jobs in one transaction: all of them or, on any bad one, none (the
        error names the bad item). Large bulks stream: this coroutine validates the next
        chunk while the writer inserts the previous one."""
        chunks = enqueueing.prepared_chunks(self.registry, requests)
        if any(d.on_before_add is not None for d in self.registry.definitions.values()):
            # Preflight needs every job before anything is written: no streaming.
            everything = [job for chunk in chunks for job in chunk]
            await self._preflight(everything)
            chunks = iter([everything])
        first = next(chunks, [])
        after = next(chunks, None)
        if after is None:
            if not first:
                return []
            return await self.ledger.enqueue(first)
        feed: records.JobFeed = SimpleQueue()
        feed.put(first)
        feed.put(after)
        done = asyncio.ensure_future(self.ledger.enqueue_stream(feed))
        try:
            for chunk in chunks:
                feed.put(chunk)
                await asyncio.sleep(0)  # let the writer take what is ready
        except BaseException as exc:
            feed.put(exc)
            with contextlib.suppress(BaseException):
                await done
            raise
        feed.put(None)
        return await done

    # --- flows -------------------------------------------------------------------------
    async def enqueue_flow(self, flow: flows.FlowJob) -> records.FlowNode:
        """Add a tree of jobs in one transaction, all of it or none: each parent waits
        (state `waiting`) until its children have succeeded, then runs and reads their
        results as `job.children`. Returns where each node went (its job id)."""
        root = flows.plan(self.registry, flow)
        await self._preflight(root.jobs())
        return await self.ledger.enqueue_tree(root)

    async def add_children(self, parent_id: str, children: Sequence[flows.FlowJob]
                           ) -> list[records.FlowNode]:
        """Add children (trees too) to a job that has not started: pending, or already
        waiting for others. It then waits for these as well."""
        planned = flows.plan_children(self.registry, children)
        await self._preflight([job for node in planned for job in node.jobs()])
        return await self.ledger.add_children(parent_id, planned)

    async def wait_for(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Wait until a job has ended (succeeded, failed, expired or cancelled), whichever
        process runs it, and return its record. Raises UnknownJob if it is not in the
        current state (or is deleted meanwhile), TimeoutError after `timeout` seconds."""
        if timeout is not None:
            timeout = codec.check_delay(timeout, "timeout")
        changed = asyncio.Event()

        async def note(event: Event) -> None:
            if event.job_id == job_id:
                changed.set()

        remove = self.add_event_handler(note, kinds=(*TERMINAL_KINDS, "delete"))
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed.clear()
                    record = await self.get_job(job_id)
                    if record is None:
                        raise UnknownJob(f"no job {job_id} in the current state (deleted, "
                                         "or never added)")
                    if record.state.terminal:
                        return record
                    await changed.wait()
        finally:
            remove()

    async def flow(self, job_id: str) -> flows.FlowTree | None:
        """The current state of the whole flow that holds this job, from its root."""
        return await asyncio.to_thread(self.ledger.read_flow, job_id)

    def enqueue_in(
        self,
        conn: object,
        job: str | JobDefinition[Any],
        payload: Any = None,
        *,
        delay: float | None = None,
        run_at: datetime | str | float | None = None,
        priority: int | None = None,
    ) -> str:
        """Enqueue inside the caller's own open transaction on the ledger (a plain
        `sqlite3.Connection` on the same file; on PostgreSQL a psycopg `Connection` to
        the same database): the job commits or rolls back with the caller's own rows.

        The file must already be an evq ledger (open a Context on it once, or run `evq
        migrate`): enqueue_in never creates the schema inside someone else's transaction.
        A connection that is closed, read-only, of another driver or on another file is
        refused with a typed error, and the caller's transaction is left as it was."""
        self._check_connection(conn)
        new = self.prepare(job, payload, delay=delay, run_at=run_at, priority=priority)
        reasons = enqueueing.refusals_now(self.registry, [new], "enqueue_in")
        self.ledger.enqueue_in(conn, new, reasons, self.clock.now)
        return enqueueing.in_callers_transaction(new, reasons)

    async def enqueue_in_async(
        self,
        conn: object,
        job: str | JobDefinition[Any],
        payload: Any = None,
        *,
        delay: float | None = None,
        run_at: datetime | str | float | None = None,
        priority: int | None = None,
    ) -> str:
        """`enqueue_in` on an async connection: inside the caller's open transaction on
        a psycopg `AsyncConnection` to a PostgreSQL ledger's database, so the job commits
        or rolls back with the caller's own rows."""
        new = self.prepare(job, payload, delay=delay, run_at=run_at, priority=priority)
        reasons = enqueueing.refusals_now(self.registry, [new], "enqueue_in_async")
        await self.ledger.enqueue_in_async(conn, new, reasons, self.clock.now)
        return enqueueing.in_callers_transaction(new, reasons)

    def _check_connection(self, conn: object) -> None:
        """enqueue_in's connection: the engine's driver's (plain sqlite3), open, in a
        transaction, on this context's ledger."""
        self.ledger.check_callers_transaction(conn)

    # --- other transitions -------------------------------------------------------------
    async def cancel(self, job_id: str, reason: str | None = None) -> None:
        """Cancel a job that has not ended. A pending one is cancelled at once; a running
        one ends as cancelled at once too (never retried): its worker, in this process or
        another, is told to stop, an async handler is cancelled, and any handler can see
        it as `job.cancel_requested`. Raises JobStateConflict if the job already ended."""
        self.runtime.stop_running(await self.ledger.cancel(job_id, reason))

    async def retry(self, job_id: str, reason: str | None = None) -> str:
        """Run a failed, expired or cancelled job again, as a new job with the same
        payload and settings; returns the new job's id (see `ops.retry`)."""
        return await self.ledger.retry(job_id, enqueueing.new_job_id(), reason)

    async def run_now(self, job_id: str, reason: str | None = None) -> None:
        """Make a pending job that waits for a later time (a delay, a run_at, a retry's
        backoff) due now: a `run_now` event; it keeps its priority and place otherwise.
        A job already due keeps its time. Raises JobStateConflict for a job that is not
        pending (running or ended), UnknownJob for none."""
        await self.ledger.run_now(job_id, reason)

    async def delete(self, job_id: str, reason: str | None = None) -> None:
        """Remove a job that is not running from the current state; its events stay. A
        flow's parent cancels its descendants that have not ended."""
        self.runtime.stop_running(await self.ledger.delete(job_id, reason))

    async def rescue_expired(self, rescuer: str = "evq") -> int:
        """Put back (or expire) jobs whose lease ran out; workers also do this. Takes a
        quarter of a second more than the writes (see `evq.rescuing.SETTLE`)."""
        from .rescuing import rescue_expired

        return await rescue_expired(self.runtime, rescuer)

    # --- reads -------------------------------------------------------------------------
    async def _head(self) -> int:
        return await self.ledger.head()

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await self.ledger.get_job(job_id)

    async def jobs(self) -> list[JobRecord]:
        return await self.ledger.jobs()

    async def history(self, job_id: str) -> list[Event]:
        """Every event of one job, in ledger order."""
        return await self.ledger.history(job_id)

    async def events(self, after: int = 0, limit: int = 1000, *, seals: bool = False
                     ) -> list[Event]:
        """At most `limit` events after the position `after`, oldest first (the hash
        chain's `seal` events only with seals=True). To read them all, page: call again
        with `after` set to the last position returned, until the list is empty."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidInput(f"limit must be an integer >= 0, got {limit!r}")
        if isinstance(after, bool) or not isinstance(after, int):
            raise InvalidInput(f"after must be an event position (an integer), got {after!r}")
        return await self.ledger.events(after, limit, seals)

    async def counts(self) -> dict[str, int]:
        return await self.ledger.counts()

    # --- events ------------------------------------------------------------------------
    def add_event_handler(self, handler: EventHandler, kinds: Iterable[str] | None = None,
                          *, durable: str | None = None, start: str | int = "beginning",
                          lease: float = 30.0) -> Callable[[], None]:
        """Call `handler(event)` for each committed event (of `kinds`, if given), in
        ledger order, from this process and every other one on the file. Returns a
        function that unsubscribes. An `async def` handler is awaited in its
        subscription's task; a plain one is called in the handler thread pool (as job
        handlers are), so neither blocks the event loop; durable or not, the same rule.

        With `durable="name"` the handler keeps a cursor in the ledger: it gets every
        event at least once with no gap, resumes after a restart where it stopped, runs
        in its own task (it never slows the workers), and one consumer holds the name at
        a time: it renews its `lease` every lease/3 seconds however slow the handler is,
        and a consumer that dies or stalls past `lease` seconds loses the name to another.
        A handler that calls `evq.advance_cursor` in the transaction that writes its own
        rows gets each event's effects committed exactly once. A new cursor starts at
        `start`: "beginning", "end", or a position."""
        if isinstance(kinds, str):
            kinds = (kinds,)
        subscriber = Subscriber(handler, EventFilter.of(kinds), self.runtime.sync_executor)
        if durable is None:
            remove = self.runtime.dispatcher.add(subscriber)
            self.runtime.watch()
            return remove
        after = 0 if start == "beginning" else None if start == "end" else start
        if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
            raise InvalidInput(f"start must be 'beginning', 'end' or a position, got {start!r}")
        lease = codec.check_delay(lease, "lease")
        if lease <= 0:
            raise InvalidTime(f"lease must be a number of seconds > 0, got {lease!r}")
        subscription = Subscription(self.ledger, subscriber, self.clock, name=durable,
                                    after=self.runtime.dispatcher.delivered_upto
                                    if after is None else after, lease=lease)
        self.runtime.start(subscription)
        return subscription.stop

    async def replay_to(self, handler: EventHandler, *, after: int = 0,
                        kinds: Iterable[str] | str | None = None,
                        queues: Iterable[str] | str | None = None, job_id: str | None = None,
                        since: Any = None, until: Any = None, follow: bool = False) -> int:
        """Feed `handler` the ledger's history after position `after` (filtered by kind,
        queue, job or time), then, with follow, new events as they commit until the task
        is cancelled. Returns the last position read."""
        self.runtime.require_open()
        wanted = EventFilter.of(kinds, queues, job_id, since, until)
        subscriber = Subscriber(handler, wanted, self.runtime.sync_executor)
        subscription = Subscription(self.ledger, subscriber, self.clock, after=after,
                                    follow=follow)
        task = self.runtime.start(subscription)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            subscription.stop()
            await task
            raise

    async def subscribers(self) -> list[records.SubscriberState]:
        """Every durable handler's cursor, and how many events it is behind."""
        self.runtime.require_open()
        return await asyncio.to_thread(self.ledger.cursor_states)

    async def flush_events(self) -> None:
        """Wait until every event committed so far has reached the handlers."""
        await self.runtime.flush_events()

    def sync(self) -> SyncProducer:
        """A producer for synchronous code (no event loop needed) on this ledger, using
        this context's job definitions. The context itself need not be open."""
        from .producer import SyncProducer

        return SyncProducer(self.ledger, self.registry)

    def worker(
        self,
        *,
        queues: Iterable[str] | None = None,
        concurrency: int = 10,
        name: str | None = None,
        grace: float = 30.0,
        batch_size: int = 100,
        hook_lease: float = 30.0,
    ) -> Worker:
        """A Worker on this context (see `evq.Worker`): it serves `queues` (default: the
        queues with `run_on_startup`), runs at most `concurrency` jobs at once, under
        `name` (default: stable, from the host and the queues), gives running jobs
        `grace` seconds when stopped, claims up to `batch_size` due jobs at a time, and
        holds an exhausted-attempts hook for `hook_lease` seconds between renewals."""
        from .worker import Worker

        return Worker(self.runtime, queues=queues, concurrency=concurrency, name=name, grace=grace,
                      batch_size=batch_size, hook_lease=hook_lease)

    async def drain(
        self,
        *,
        queues: Iterable[str] | None = None,
        concurrency: int = 10,
        name: str | None = None,
        batch_size: int = 100,
    ) -> int:
        """Run a worker (see `worker`) until no job is due, then return how many jobs it
        ran."""
        return await self.worker(queues=queues, concurrency=concurrency, name=name,
                                 batch_size=batch_size).run(until_idle=True)
