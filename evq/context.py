"""The Context: one ledger file opened by this process, the job definitions registered on
it, enqueueing, reading jobs back, and event subscriptions."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from . import codec, enqueueing, files, flows
from .clock import Clock, SystemClock
from .durable import EventFilter, SubscriberState, Subscription
from .enqueueing import EnqueueRequest
from .errors import (
    ContextClosed,
    DuplicateJob,
    InvalidInput,
    InvalidTime,
    LedgerReadOnly,
    UnknownJob,
)
from .events import TERMINAL_KINDS, Event, event_from_row
from .jobs import DEFAULT_QUEUE, Handler, JobDefinition, JobRecord
from .ledger import records
from .ledger.records import Durability
from .ledger.sqlite import connection, maintenance, ops, sql, trees
from .ledger.sqlite.failures import ledger_error
from .ledger.sqlite.tx import AppendedRow, Tx
from .ledger.sqlite.writer import Writer
from .outcomes import RetryPolicy
from .queues import Queue
from .retry import Backoff, no_delay
from .subscribers import Dispatcher, EventHandler
from .watch import CommitWatcher

if TYPE_CHECKING:
    import aiosqlite

    from .orchestrator import Orchestrator
    from .producer import SyncProducer
    from .worker import Worker

F = TypeVar("F", bound=Callable[..., Any])
_WAKING_KINDS = frozenset({"enqueue", "requeue", "defer", "error", "rescue", "ready"})


T = TypeVar("T")


def _build(cls: type[T], what: str, *args: Any, **options: Any) -> T:
    """cls(*args, **options), with an unknown option refused by name."""
    known = {field.alias for field in attrs.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidInput(f"unknown {what} option(s) {', '.join(unknown)}; the options are "
                           f"{', '.join(sorted(known - {'name', 'context'}))}")
    return cls(*args, **options)


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
        self._definitions: dict[str, JobDefinition[Any]] = {}
        self._queues: dict[str, Queue] = {}
        self._dispatcher = Dispatcher(self.path)
        self._writer: Writer | None = None
        self._reader: aiosqlite.Connection | None = None
        self._watcher = CommitWatcher(self.path, self.poll_interval, self._foreign_commit)
        self._watchers = 0
        self._wake_callbacks: list[Callable[[bool], None]] = []
        self._cancel_listeners: list[Callable[[str], None]] = []
        self._subscriptions: dict[Subscription, asyncio.Task[int]] = {}
        self._sync_threads = _positive_int(sync_handler_threads, "sync_handler_threads")
        self._running_workers: dict[Worker, asyncio.Event] = {}
        self._sync_executor: ThreadPoolExecutor | None = None

    # --- lifecycle ---------------------------------------------------------------------
    async def open(self) -> Context:
        """Open the ledger (creating or upgrading its schema). Raises the typed
        `LedgerError` that says why it cannot be used, having released everything."""
        if self._writer is not None:
            return self
        connection.create_file(self.path, self.file_mode)
        writer = Writer(self.path, self.clock, self.durability, self._committed,
                        self._busy_timeout_ms)
        try:
            await writer.open()
            self._writer = writer
            self._reader = await connection.open_reader(self.path, self._busy_timeout_ms)
            head = await self._head()
            await self._dispatcher.open(head)
        except BaseException:
            await self._release(writer)
            raise
        return self

    async def _release(self, writer: Writer) -> None:
        """Undo a failed open: close whatever it opened (its threads would otherwise keep
        the process from exiting)."""
        self._writer = None
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader.close()
            self._reader = None
        with contextlib.suppress(Exception):
            await writer.close()

    @property
    def busy_timeout_ms(self) -> int:
        """How long, in milliseconds, a write waits for another connection's lock."""
        return self._busy_timeout_ms

    async def close(self) -> None:
        """Commit what was handed over, deliver pending events, release the file."""
        if self._writer is None:
            return
        for worker, stopped in list(self._running_workers.items()):
            worker.stop()
            await stopped.wait()
        for subscription, task in list(self._subscriptions.items()):
            subscription.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._watcher.stop()
        await self._writer.close()
        await self._dispatcher.close()
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self._sync_executor is not None:
            self._sync_executor.shutdown(wait=False)
            self._sync_executor = None
        self._writer = None

    async def __aenter__(self) -> Context:
        return await self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @property
    def writer(self) -> Writer:
        if self._writer is None:
            raise ContextClosed(
                "the evq context is not open: use `async with Context(path) as ctx:`")
        return self._writer

    # --- queues ------------------------------------------------------------------------
    def queue(self, name: str, **settings: Any) -> Queue:
        """Configure a queue in this process (see `evq.Queue` for the settings)."""
        if name in self._queues:
            raise DuplicateJob(f"queue {name!r} is already configured on this context")
        queue = _build(Queue, "queue", name, **settings)
        self._queues[name] = queue
        return queue

    @property
    def queues(self) -> Mapping[str, Queue]:
        """Every queue this process knows: configured ones, and those its jobs use."""
        known = {d.queue: Queue(d.queue) for d in self._definitions.values()}
        return {**known, **self._queues}

    async def pause(self, queue: str, reason: str | None = None) -> None:
        """Stop every worker on the ledger from claiming this queue's jobs (running ones
        finish; nothing is lost). A `pause` event."""
        await self._set_paused(queue, True, reason)

    async def resume(self, queue: str, reason: str | None = None) -> None:
        """Let workers claim this queue's jobs again. A `resume` event."""
        await self._set_paused(queue, False, reason)

    async def _set_paused(self, queue: str, paused: bool, reason: str | None) -> None:
        codec.check_name(queue, "queue")
        await self.writer.run(functools.partial(ops.set_paused, queue=queue, paused=paused,
                                                reason=reason))

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
        if options.get("backoff") is None:
            options.pop("backoff", None)
        definition: JobDefinition[Any] = _build(JobDefinition, "job definition", name,
                                                handler, context=self, **options)
        if name in self._definitions:
            raise DuplicateJob(f"job {name!r} is already defined on this context")
        self._definitions[name] = definition
        return definition

    async def deploy(self) -> list[str]:
        """Record this process's job definitions in the ledger (cuckmq's deploy): a
        `deploy` event for each one that is new or changed. Other processes, the CLI and
        orchestrators then know which jobs and schedules exist. Returns the names."""
        from .orchestrator import settings_of

        found = {name: (d.queue, settings_of(d)) for name, d in self._definitions.items()}
        return await self.writer.run(functools.partial(maintenance.deploy,
                                                       definitions=found))

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
            self, name=name, interval=interval, leader_lease=leader_lease,
            orphan_after=orphan_after, worker_ttl=worker_ttl, batch=batch,
            archive_to=archive_to, archive_after=archive_after, archive_every=archive_every)

    @property
    def definitions(self) -> Mapping[str, JobDefinition[Any]]:
        return dict(self._definitions)

    def definition(self, name: str) -> JobDefinition[Any]:
        try:
            return self._definitions[name]
        except KeyError:
            known = ", ".join(sorted(self._definitions)) or "none"
            raise UnknownJob(
                f"no job named {name!r} is defined on this context (defined: {known}); "
                "register it with @ctx.job or ctx.define"
            ) from None

    def _definition_of(self, job: object) -> JobDefinition[Any]:
        """The definition a caller names: a job name or a JobDefinition of this context."""
        if isinstance(job, JobDefinition):
            return self.definition(job.name)
        if not isinstance(job, str):
            raise UnknownJob(f"a job is named by its name (a str) or its JobDefinition, "
                             f"got {job!r:.80}")
        return self.definition(job)

    def retry_policy(self, name: str, max_attempts: int | None) -> RetryPolicy:
        """The retry policy of a job by name; rescue uses it for jobs of any process."""
        definition = self._definitions.get(name)
        if definition is None:
            return RetryPolicy(max_attempts, no_delay)
        return RetryPolicy(max_attempts, definition.backoff,
                           definition.on_max_attempts_exhausted is not None)

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
        return enqueueing.prepare(
            self._definition_of(job), payload,
            now=self.clock.now() if now is None else now,
            max_payload_bytes=self.max_payload_bytes, delay=delay, run_at=run_at,
            priority=priority, key=key, group=group)

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
        ids = await self.writer.run(functools.partial(ops.enqueue, jobs=(new,)))
        return ids[0]

    async def _preflight(self, jobs: Sequence[records.NewJob]) -> None:
        """Ask each definition's on_before_add; if any refuses, record `reject` events
        for the refused ones, add nothing, and raise JobRejected."""
        reasons = await enqueueing.refusals(self, jobs)
        if reasons:
            refused = [job for job in jobs if job.id in reasons]
            await self.writer.run(functools.partial(ops.reject, jobs=refused, reasons=reasons))
            raise enqueueing.rejected(jobs, reasons, "nothing was added")

    async def enqueue_many(self, requests: Iterable[EnqueueRequest | tuple[Any, ...]]
                           ) -> list[str]:
        """Add many jobs in one transaction: all of them or, on any bad one, none (the
        error names the bad item). Large bulks stream: this coroutine validates the next
        chunk while the writer inserts the previous one."""
        chunks = enqueueing.prepared_chunks(self, requests)
        if any(d.on_before_add is not None for d in self._definitions.values()):
            # Preflight needs every job before anything is written: no streaming.
            everything = [job for chunk in chunks for job in chunk]
            await self._preflight(everything)
            chunks = iter([everything])
        first = next(chunks, [])
        after = next(chunks, None)
        if after is None:
            if not first:
                return []
            return await self.writer.run(functools.partial(ops.enqueue, jobs=first),
                                         weight=len(first))
        stream = ops.EnqueueStream()
        stream.feed.put(first)
        stream.feed.put(after)
        done = asyncio.ensure_future(self.writer.run(stream, weight=1 << 30))
        try:
            for chunk in chunks:
                stream.feed.put(chunk)
                await asyncio.sleep(0)  # let the writer take what is ready
        except BaseException as exc:
            stream.feed.put(exc)
            with contextlib.suppress(BaseException):
                await done
            raise
        stream.feed.put(None)
        return await done

    # --- flows -------------------------------------------------------------------------
    async def enqueue_flow(self, flow: flows.FlowJob) -> records.FlowNode:
        """Add a tree of jobs in one transaction, all of it or none: each parent waits
        (state `waiting`) until its children have succeeded, then runs and reads their
        results as `job.children`. Returns where each node went (its job id)."""
        root = flows.plan(self, flow)
        await self._preflight(trees.jobs_of(root))
        return await self.writer.run(functools.partial(trees.enqueue_tree, root=root))

    async def add_children(self, parent_id: str, children: Sequence[flows.FlowJob]
                           ) -> list[records.FlowNode]:
        """Add children (trees too) to a job that has not started: pending, or already
        waiting for others. It then waits for these as well."""
        planned = flows.plan_children(self, children)
        await self._preflight([job for node in planned for job in trees.jobs_of(node)])
        return await self.writer.run(functools.partial(
            trees.add_children, parent_id=parent_id, children=planned))

    async def wait_for(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Wait until a job has ended (succeeded, failed, expired or cancelled), whichever
        process runs it, and return its record. Raises UnknownJob if it is not in the
        current state (or is deleted meanwhile), TimeoutError after `timeout` seconds."""
        if timeout is not None:
            timeout = codec.check_delay(timeout, "timeout")
        changed = asyncio.Event()

        def note(event: Event) -> None:
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
        def read() -> flows.FlowTree | None:
            with contextlib.closing(connection.connect(
                    self.path, read_only=True, busy_timeout_ms=self._busy_timeout_ms)) as conn:
                try:
                    return flows.read_tree(conn, job_id)
                except sqlite3.Error as exc:
                    raise ledger_error(exc, self.path, "reading",
                                       self._busy_timeout_ms / 1000) from exc
        return await asyncio.to_thread(read)

    def enqueue_in(
        self,
        conn: sqlite3.Connection,
        job: str | JobDefinition[Any],
        payload: Any = None,
        *,
        delay: float | None = None,
        run_at: datetime | str | float | None = None,
        priority: int | None = None,
    ) -> str:
        """Enqueue inside the caller's own open transaction on the same file (plain
        `sqlite3`): the job commits or rolls back with the caller's own rows.

        The file must already be an evq ledger (open a Context on it once, or run `evq
        migrate`): enqueue_in never creates the schema inside someone else's transaction.
        A connection that is closed, read-only, of another driver or on another file is
        refused with a typed error, and the caller's transaction is left as it was."""
        self._check_connection(conn)
        new = self.prepare(job, payload, delay=delay, run_at=run_at, priority=priority)
        reasons = enqueueing.refusals_now(self, [new], "enqueue_in")
        try:
            # Take the write lock first (the transaction may have only read so far), so
            # that the time is read while no other commit can land before this one.
            # The schema is checked only then: a read before the lock would start a
            # snapshot that another process's commit can make impossible to write from.
            try:
                conn.execute(sql.TAKE_WRITE_LOCK)
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
            connection.require_version(conn, self.path)
            tx = Tx.locked(conn, self.clock.now())
            conn.execute(sql.SAVEPOINT)
            try:
                if reasons:
                    ops.reject(tx, (new,), reasons)
                else:
                    ops.enqueue(tx, (new,))
                tx.seal()
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled it all back already
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute(sql.ROLLBACK_TO)
                        conn.execute(sql.RELEASE)
                raise
            conn.execute(sql.RELEASE)
        except sqlite3.Error as exc:
            error = ledger_error(exc, self.path, "enqueueing in",
                                 connection.busy_timeout(conn))
            if isinstance(error, LedgerReadOnly):
                error = LedgerReadOnly(f"{error}; or your connection is read-only (opened "
                                       "with mode=ro, or query_only): enqueue_in writes "
                                       "through it")
            raise error from exc
        if reasons:
            raise enqueueing.rejected(
                [new], reasons, "the `reject` event commits with your transaction")
        return new.id

    def _check_connection(self, conn: sqlite3.Connection) -> None:
        """enqueue_in's connection: a plain sqlite3 one, open, in a transaction, on this
        context's ledger, which has this evq's schema."""
        if not isinstance(conn, sqlite3.Connection):
            kind = f"{type(conn).__module__}.{type(conn).__qualname__}"
            raise InvalidInput(
                f"enqueue_in takes a plain sqlite3.Connection open on {self.path}, got a "
                f"{kind}" + (": with aiosqlite, use `await ctx.enqueue(...)`, or enqueue_in "
                             "on a sqlite3 connection of your own" if "aiosqlite" in kind
                             else ""))
        try:
            in_transaction = conn.in_transaction
        except sqlite3.ProgrammingError:
            raise InvalidInput(
                "the connection given to enqueue_in is closed: enqueue on an open "
                "connection, inside your transaction") from None
        if not in_transaction:
            raise InvalidInput(
                "enqueue_in needs a transaction that is open on `conn`: write your own "
                "rows first (or execute BEGIN), then enqueue, then commit")
        try:
            files = {row[2] for row in conn.execute(sql.DATABASE_LIST) if row[1] == "main"}
            if str(self.path.resolve()) not in {str(Path(f).resolve()) for f in files if f}:
                raise InvalidInput(
                    f"the connection is not on this context's ledger {self.path}; open it "
                    "on the same file")
        except sqlite3.Error as exc:
            raise ledger_error(exc, self.path, "enqueueing in") from exc

    # --- other transitions -------------------------------------------------------------
    async def cancel(self, job_id: str, reason: str | None = None) -> None:
        """Cancel a job that has not ended. A pending one is cancelled at once; a running
        one ends as cancelled at once too (never retried): its worker, in this process or
        another, is told to stop, an async handler is cancelled, and any handler can see
        it as `job.cancel_requested`. Raises JobStateConflict if the job already ended."""
        running = await self.writer.run(functools.partial(ops.cancel, job_id=job_id,
                                                          reason=reason))
        self._stop_running(running)

    def _stop_running(self, cancelled: list[tuple[str, bool]]) -> None:
        for job_id, running in cancelled:
            for listener in list(self._cancel_listeners) if running else ():
                listener(job_id)

    async def retry(self, job_id: str, reason: str | None = None) -> str:
        """Run a failed, expired or cancelled job again, as a new job with the same
        payload and settings; returns the new job's id (see `ops.retry`)."""
        return await self.writer.run(functools.partial(
            ops.retry, job_id=job_id, new_id=enqueueing.new_job_id(), reason=reason))

    async def delete(self, job_id: str, reason: str | None = None) -> None:
        """Remove a job that is not running from the current state; its events stay. A
        flow's parent cancels its descendants that have not ended."""
        self._stop_running(await self.writer.run(functools.partial(
            ops.delete, job_id=job_id, reason=reason)))

    async def rescue_expired(self, rescuer: str = "evq") -> int:
        """Put back (or expire) jobs whose lease ran out; workers also do this. Takes a
        quarter of a second more than the writes (see `evq.ledger.sqlite.stalls`)."""
        from .rescuing import rescue_expired

        return await rescue_expired(self, rescuer)

    # --- reads -------------------------------------------------------------------------
    async def _read(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        if self._reader is None:
            raise ContextClosed("the evq context is not open")
        try:
            cursor = await self._reader.execute(query, tuple(params))
            rows = list(await cursor.fetchall())
            await cursor.close()
        except sqlite3.Error as exc:
            raise ledger_error(exc, self.path, "reading",
                               self._busy_timeout_ms / 1000) from exc
        return rows

    async def _head(self) -> int:
        return int((await self._read(sql.HEAD_POSITION))[0][0])

    async def get_job(self, job_id: str) -> JobRecord | None:
        rows = await self._read(sql.GET_JOB, (job_id,))
        return JobRecord.from_row(tuple(rows[0])) if rows else None

    async def jobs(self) -> list[JobRecord]:
        return [JobRecord.from_row(tuple(r)) for r in await self._read(sql.LIST_JOBS)]

    async def history(self, job_id: str) -> list[Event]:
        """Every event of one job, in ledger order."""
        rows = await self._read(sql.EVENTS_FOR_JOB, (job_id,))
        return [event_from_row(tuple(r)) for r in rows]

    async def events(self, after: int = 0, limit: int = 1000, *, seals: bool = False
                     ) -> list[Event]:
        """At most `limit` events after the position `after`, oldest first (the hash
        chain's `seal` events only with seals=True). To read them all, page: call again
        with `after` set to the last position returned, until the list is empty."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidInput(f"limit must be an integer >= 0, got {limit!r}")
        if isinstance(after, bool) or not isinstance(after, int):
            raise InvalidInput(f"after must be an event position (an integer), got {after!r}")
        query = sql.EVENTS_AFTER if seals else sql.EVENTS_AFTER_UNSEALED
        return [event_from_row(tuple(r)) for r in await self._read(query, (after, limit))]

    async def counts(self) -> dict[str, int]:
        return {state: n for state, n in await self._read(sql.COUNT_JOBS_BY_STATE)}

    # --- events ------------------------------------------------------------------------
    def add_event_handler(self, handler: EventHandler, kinds: Iterable[str] | None = None,
                          *, durable: str | None = None, start: str | int = "beginning",
                          lease: float = 30.0) -> Callable[[], None]:
        """Call `handler(event)` for each committed event (of `kinds`, if given), in
        ledger order, from this process and every other one on the file. Returns a
        function that unsubscribes.

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
        if durable is None:
            remove = self._dispatcher.add(handler, kinds)
            self._watch()
            return remove
        after = 0 if start == "beginning" else None if start == "end" else start
        if after is not None and (isinstance(after, bool) or not isinstance(after, int)):
            raise InvalidInput(f"start must be 'beginning', 'end' or a position, got {start!r}")
        lease = codec.check_delay(lease, "lease")
        if lease <= 0:
            raise InvalidTime(f"lease must be a number of seconds > 0, got {lease!r}")
        subscription = Subscription(self, handler, EventFilter.of(kinds), name=durable,
                                    after=self._dispatcher.delivered_upto
                                    if after is None else after, lease=lease)
        return self._start_subscription(subscription)

    def _start_subscription(self, subscription: Subscription) -> Callable[[], None]:
        self.writer  # noqa: B018 - raises ContextClosed when not open
        task = asyncio.get_running_loop().create_task(subscription.run())
        self._subscriptions[subscription] = task
        self._watch()

        def remove() -> None:
            subscription.stop()

        task.add_done_callback(lambda _: self._subscriptions.pop(subscription, None))
        return remove

    async def replay_to(self, handler: EventHandler, *, after: int = 0,
                        kinds: Iterable[str] | str | None = None,
                        queues: Iterable[str] | str | None = None, job_id: str | None = None,
                        since: Any = None, until: Any = None, follow: bool = False) -> int:
        """Feed `handler` the ledger's history after position `after` (filtered by kind,
        queue, job or time), then, with follow, new events as they commit until the task
        is cancelled. Returns the last position read."""
        subscription = Subscription(self, handler, EventFilter.of(
            kinds, queues, job_id, since, until), after=after, follow=follow)
        task = asyncio.get_running_loop().create_task(subscription.run())
        self._subscriptions[subscription] = task
        self._watch()
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            subscription.stop()
            await task
            raise
        finally:
            self._subscriptions.pop(subscription, None)

    async def subscribers(self) -> list[SubscriberState]:
        """Every durable handler's cursor, and how many events it is behind."""
        head = await self._head()
        return [SubscriberState(name, position, head, holder, updated)
                for name, position, holder, _, updated in await self._read(sql.LIST_CURSORS)]

    async def flush_events(self) -> None:
        """Wait until every event committed so far has reached the handlers."""
        self._dispatcher.poke()
        await self._dispatcher.flush()

    def _committed(self, rows: list[AppendedRow]) -> None:
        self._dispatcher.committed(rows)
        for subscription in self._subscriptions:
            subscription.wake.set()
        if any(row[2] in _WAKING_KINDS for row in rows):
            self.wake_workers(foreign=False)

    # --- waking workers ----------------------------------------------------------------
    def wake_workers(self, foreign: bool) -> None:
        for callback in list(self._wake_callbacks):
            callback(foreign)

    def on_wake(self, callback: Callable[[bool], None]) -> Callable[[], None]:
        """Register `callback(foreign)`, run when jobs may have become claimable; foreign
        says the commit came from another connection (another process, say)."""
        self._wake_callbacks.append(callback)
        self._watch()

        def remove() -> None:
            if callback in self._wake_callbacks:
                self._wake_callbacks.remove(callback)

        return remove

    def _watch(self) -> None:
        """Start noticing other connections' commits, once something needs to know."""
        if self._writer is not None:
            self._watcher.start()

    def _foreign_commit(self) -> None:
        self._dispatcher.poke()
        for subscription in self._subscriptions:
            subscription.wake.set()
        self.wake_workers(foreign=True)

    def worker_running(self, worker: Worker) -> Callable[[], None]:
        """Track a running worker so close() can stop it first; returns the 'done' call."""
        stopped = asyncio.Event()
        self._running_workers[worker] = stopped

        def done() -> None:
            self._running_workers.pop(worker, None)
            stopped.set()

        return done

    def sync_executor(self) -> ThreadPoolExecutor:
        """Threads for synchronous handlers, so they never block the event loop."""
        if self._sync_executor is None:
            self._sync_executor = ThreadPoolExecutor(
                self._sync_threads, thread_name_prefix="evq-handler")
        return self._sync_executor

    def sync(self) -> SyncProducer:
        """A producer for synchronous code (no event loop needed) on this ledger, using
        this context's job definitions. The context itself need not be open."""
        from .producer import SyncProducer

        return SyncProducer(self)

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

        return Worker(self, queues=queues, concurrency=concurrency, name=name, grace=grace,
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
