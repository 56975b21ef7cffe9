"""The ledger interface: every operation evq asks of a storage engine, named for what it
means, with typed records in and out (records.py). The runtime (Context, workers, the
orchestrator, subscribers), the producers, the audit tools and the CLI reach storage only
through this; an engine (evq/ledger/sqlite/, next evq/ledger/postgres/) implements it and
maps every driver error to an `evq.EvqError` before it crosses.

Decisions stay above the seam, in plain Python every engine shares: what follows a
failure (evq/outcomes.py), a schedule's catch-up (schedules.py), a flow's plan and
cascades (flows.py, cascades.py), claim room and groups (claiming.py), which transitions
are allowed and idempotency (transitions.py). Engines read rows, call these decisions and
append the events they return. Anything the user supplies (backoff, preflight, hooks,
group functions) is evaluated before a write is handed over, so no user code ever runs
inside a write transaction.

Two sides share one handle. The runtime side (`open` ... `close`) holds the process's
group-committing writer and is async. The audit side (reads for the CLI, verify, replay,
export, import, archive, migrate) is synchronous, opens what it needs per call, and works
on a ledger no runtime has opened.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from ..clock import Clock
from ..errors import EvqError
from ..events import Event
from ..jobs import JobRecord
from ..outcomes import Planned
from . import audit_records, records

OnCommit = Callable[[Sequence[records.Committed]], None]


class Ledger(Protocol):
    """One ledger (a SQLite file; a PostgreSQL schema), as one process uses it."""

    location: str  # what to show a user: a path, or a URL without its password

    # --- the runtime: one writer per process, group-committed -------------------------
    async def open(self, clock: Clock, on_commit: OnCommit) -> None:
        """Create or upgrade the schema, start the writer and the reader. `on_commit` gets
        the events of each commit this process makes, in order, after it commits."""

    async def close(self) -> None:
        """Commit what was handed over, then release everything."""

    @property
    def is_open(self) -> bool: ...

    async def flush(self) -> None:
        """Return once everything handed to the writer so far is committed."""

    async def enqueue(self, jobs: Sequence[records.NewJob]) -> list[str]:
        """Add jobs (one `enqueue` event each) in one transaction, all or none. A job
        whose idempotency key names a live job adds nothing: its id is that job's."""

    async def enqueue_stream(self, chunks: records.JobFeed) -> list[str]:
        """`enqueue` for a bulk validated while it is written: chunks arrive through
        `chunks` until it yields None; all commit in one transaction or none does."""

    async def reject(self, jobs: Sequence[records.NewJob], reasons: Mapping[str, str]
                     ) -> None:
        """Record that preflight refused these jobs (`reject` events; no job is added)."""

    async def enqueue_tree(self, root: records.PlannedNode) -> records.FlowNode:
        """Add a planned flow, all of it or none."""

    async def add_children(self, parent_id: str, children: Sequence[records.PlannedNode]
                           ) -> list[records.FlowNode]:
        """Add children to a job that has not started; it then waits for them too."""

    async def cancel(self, job_id: str, reason: str | None) -> list[records.Stopped]:
        """Cancel a job that has not ended, and a flow parent's live descendants."""

    async def retry(self, job_id: str, new_id: str, reason: str | None) -> str:
        """Enqueue a job that ended badly again, as `new_id`."""

    async def run_now(self, job_id: str, reason: str | None) -> float:
        """Make a pending job due now (a `run_now` event); its new run_at. UnknownJob, or
        JobStateConflict for a job that is not pending."""

    async def delete(self, job_id: str, reason: str | None) -> list[records.Stopped]:
        """Remove a job that is not running from the current state (its events stay)."""

    async def set_paused(self, queue: str, paused: bool, reason: str | None) -> None: ...

    async def deploy(self, definitions: Mapping[str, records.Deployment]) -> list[str]:
        """Record the definitions whose settings changed; returns their names."""

    # --- workers --------------------------------------------------------------------------
    async def announce_worker(self, request: records.Announce) -> records.Announced:
        """Take a worker name no live worker holds, register it, and (Joystick's
        retry_jobs_running_before_restart) put back what a worker of that name held."""

    async def forget_worker(self, name: str) -> None: ...

    async def claim(self, request: records.ClaimRequest) -> records.ClaimResult:
        """Take due jobs for a worker (queue limits and groups held across every
        process), with when to look again and the leases found expired."""

    async def start_run(self, held: records.Attempt) -> None:
        """The `run` event of a claimed job whose okay_to_run said yes."""

    async def report(self, held: records.Attempt, steps: Sequence[Planned]
                     ) -> list[Planned]:
        """Commit an attempt's outcome, fenced on `held` (LeaseLost if it is no longer
        the holder's), with what follows it in a flow. Returns the steps as written."""

    async def heartbeat(self, beats: Sequence[records.Beat]) -> list[float | None]:
        """Extend running jobs' leases; for each beat the new `lease_until`, or None
        where the lease was lost (the job was rescued or cancelled meanwhile)."""

    async def cancelled_among(self, job_ids: Sequence[str]) -> list[str]:
        """Which of these jobs (running here) were cancelled by another process."""

    async def take_hook(self, names: Sequence[str], worker: str, lease: float
                        ) -> records.HookTaken:
        """Lease one expired job whose on_max_attempts_exhausted hook is due; with when
        the next one is due."""

    async def renew_hook(self, held: records.Attempt, lease: float) -> None: ...

    async def finish_hook(self, held: records.Attempt, error: dict[str, Any] | None
                          ) -> None: ...

    # --- rescue ---------------------------------------------------------------------------
    async def expired_leases(self, limit: int = 500) -> records.ExpiredLeases:
        """Running jobs whose lease ran out, and until when a lock stall protects them."""

    async def rescue(self, rescues: Sequence[records.Rescue], rescuer: str) -> int:
        """Write each rescue decided for an expired lease, if that lease is still the one
        that ran out. Returns how many were written."""

    # --- the orchestrator's leader --------------------------------------------------------
    async def lead(self, role: str, holder: str, lease: float) -> bool: ...

    async def step_down(self, role: str, holder: str) -> None: ...

    async def fire_schedules(self, local: Mapping[str, records.LocalSchedule],
                             jobs: Mapping[str, records.NewJob | dict[str, Any]]
                             ) -> list[records.Fired]: ...

    async def cleanup(self, rules: Sequence[records.CleanupRule], limit: int) -> int: ...

    async def report_orphans(self, worker_ttl: float, after: float, limit: int
                             ) -> list[str]: ...

    # --- the runtime's reads ----------------------------------------------------------------
    async def head(self) -> int:
        """The newest event's position (0 on an empty ledger)."""

    async def get_job(self, job_id: str) -> JobRecord | None: ...

    async def jobs(self) -> list[JobRecord]: ...

    async def history(self, job_id: str) -> list[Event]: ...

    async def events(self, after: int, limit: int, seals: bool) -> list[Event]: ...

    async def counts(self) -> dict[str, int]: ...

    # --- subscribers, cursors, commit watching, producers ---------------------------------
    # Events for catch-up are read with `events(after, limit, seals=True)`.
    def watch_commits(self, interval: float, on_change: Callable[[], None]
                      ) -> Callable[[], Awaitable[None]]:
        """Call `on_change()` (in the event loop) within about `interval` seconds of a
        commit another connection made to the ledger (another process, or a caller's own
        transaction). Returns the coroutine function that stops watching."""

    async def take_cursor(self, name: str, holder: str, previous: str | None, lease: float,
                          start: int) -> int | None:
        """Take durable handler `name` under the new token `holder` (a new cursor starts
        at `start`) if nobody holds it, its lease has run out, or it is still held under
        `previous`: returns the position to resume after, or None if it is held."""

    async def move_cursor(self, name: str, holder: str, position: int, lease: float
                          ) -> bool:
        """Renew the lease for `lease` seconds and save `position` (never backwards);
        False if the name is no longer held under `holder`."""

    async def release_cursor(self, name: str, holder: str, position: int) -> None:
        """Save `position` and free the name, if it is still held under `holder`."""

    async def cursor_lease(self, name: str) -> records.CursorLease | None:
        """Who holds the name and until when (None: no such cursor yet); a read."""

    def cursor_states(self) -> list[records.SubscriberState]:
        """Every durable cursor and the ledger's head (synchronous; needs no runtime)."""

    def advance_cursor_in(self, conn: object, name: str, holder: str, position: int,
                          now: float) -> None:
        """Move cursor `name` to `position` inside the caller's open transaction on
        `conn` (a connection of this engine's driver), fenced on `holder` and forward
        only; otherwise roll that transaction back and raise CursorLost."""

    def check_callers_transaction(self, conn: object) -> None:
        """Refuse (InvalidInput) a `conn` that is not this engine's driver's connection,
        open, inside a transaction, on this ledger."""

    def enqueue_in(self, conn: object, job: records.NewJob, reasons: Mapping[str, str],
                   now: Callable[[], float]) -> None:
        """Enqueue `job` (or, with `reasons`, record its `reject` event) inside the
        caller's open transaction on `conn`, so it commits or rolls back with the
        caller's rows. `now()` is read once the write lock is held. Never creates the
        schema; leaves the caller's transaction as it was on any failure."""

    async def enqueue_in_async(self, conn: object, job: records.NewJob,
                               reasons: Mapping[str, str], now: Callable[[], float]
                               ) -> None:
        """`enqueue_in` on a caller's async connection (PostgreSQL: a psycopg
        AsyncConnection); an engine whose driver has none refuses with InvalidInput."""

    def producer(self, clock: Clock) -> records.ProducerSession:
        """A synchronous session for code without an event loop (Context.sync()): its
        own connection, creating or upgrading the schema; needs no runtime."""

    # --- the audit side ---
    # Synchronous (the CLI is), needing no runtime: each call opens what it needs and
    # refuses, with the typed error that says why, a ledger that is missing, not an evq
    # ledger, or of another schema version. Iterators hold a read open while iterated.
    def check_schema(self) -> None:
        """Raise the typed error that says why if this is not a complete evq ledger of
        this evq's schema version (nothing there, another program's file, older or
        newer, a table lost)."""

    def typed_error(self, exc: BaseException) -> EvqError | None:
        """The typed error for a driver error of this engine that escaped it; None if
        `exc` is not one (a last safety net for the CLI)."""

    def find_job_ids(self, text: str, most: int) -> list[str]:
        """The job `text` names: [text] if a job (current, deleted, or only in events)
        has that id; otherwise the ids that begin or end with it, matched literally, at
        most `most` of each kind, sorted."""

    def job_labels(self, job_ids: Sequence[str]) -> dict[str, audit_records.JobLabel]:
        """What to call each of these jobs when people must choose between them."""

    def read_events(self, after: int = 0) -> Iterator[Event]:
        """Every event after position `after`, seals included, oldest first, read in
        short chunks."""

    def read_events_back(self, before: int) -> Iterator[Event]:
        """Every event before position `before`, newest first, read in short chunks."""

    def follow(self, after: int, poll: float) -> Iterator[Event]:
        """Events committed after `after` by any process, as they come (looking every
        `poll` seconds); never ends by itself."""

    def last_position(self, at: float | None = None) -> int:
        """The newest event's position (0: none); with `at`, the position just before the
        first event stamped after that time (the ledger as it stood then), found in a
        few indexed reads. Exact when times never decrease in position order, as this
        evq writes them; a ledger written by older writers with clocks that disagreed
        may hold an earlier event stamped after `at`: then this is an upper bound, and
        `replay_into(upto_at=...)` makes the exact cut."""

    def job_history(self, job_id: str) -> list[Event]:
        """Every event of a job, whatever became of it, in ledger order."""

    def events_of_jobs(self, job_ids: Sequence[str]) -> list[Event]:
        """Every event of these jobs (a flow's), in ledger order."""

    def read_job(self, job_id: str) -> JobRecord | None: ...

    def find_jobs(self, wanted: audit_records.JobFilter) -> list[JobRecord]:
        """Current jobs as `wanted` says, oldest first."""

    def job_page(self, query: audit_records.JobQuery) -> audit_records.JobPage:
        """A page of current jobs matching `query`, newest first."""

    def count_jobs(self, query: audit_records.JobQuery) -> int:
        """How many current jobs match `query` (counting at most `query.limit`)."""

    def job_counts(self) -> list[tuple[str, str, int]]:
        """How many current jobs each queue holds in each state: (queue, state, n)."""

    def finished_over_time(self, since: float, until: float, step: float
                           ) -> list[tuple[int, str, int]]:
        """How many of the current jobs finished in each `step` seconds from `since` to
        `until`, by final state: (slot, state, n), slot 0 starting at `since`, in order.
        Read from the jobs (an index), not the events: cleaned-up jobs are not counted."""

    def backlog(self, now: float) -> list[tuple[str, int, float]]:
        """Per queue, the pending jobs due at `now` (not scheduled later): (queue, how
        many, the earliest time one of them became due), by queue."""

    def workers(self) -> list[audit_records.WorkerSeen]:
        """Every worker that announced itself, by name."""

    def paused_queues(self) -> list[str]:
        """The queues paused now, by name."""

    def storage_size(self) -> audit_records.StorageSize:
        """How much room the ledger takes now."""

    def read_flow(self, job_id: str) -> audit_records.FlowTree | None:
        """The whole flow that holds this job, from its root down; None if the job is
        not in the current state."""

    def definitions(self) -> list[audit_records.Deployed]:
        """The deployed job definitions by name, with their schedules."""

    def verify(self, expect_head: str | None = None,
               archives: Sequence[audit_records.ArchiveFile] = (), *,
               progress: Callable[[str, int, int], None] | None = None
               ) -> audit_records.LedgerCheck:
        """Check the storage, the append-only rules, the hash chain (with the archive
        files given; `expect_head`: a head printed earlier, which must still be a seal)
        and that replaying the events gives the stored state. `progress(stage, done,
        total)` hears now and then (every few thousand events, a few times a second at
        most) how far it has got, in events up to the head position, on the calling
        thread: stage "storage", "hash chain" or "replay" (an engine may skip a stage).
        What it raises ends verify and propagates."""

    def check_replay(self) -> audit_records.ReplayCheck:
        """Replay every event apart and compare with the stored state."""

    def replay_into(self, target: Ledger, upto: int | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    archived: Mapping[int, tuple[Any, ...]] | None = None,
                    upto_at: float | None = None) -> int:
        """Build `target`, a new ledger of this engine (nothing there yet; it appears
        only whole), from the events up to position `upto` (all: None) and before the
        first event stamped after `upto_at` (no limit: None), with `archived` events
        (position -> exported row) put back in place. `progress(done, total)` hears
        about long replays. Returns the number of events replayed."""

    def export(self) -> Iterator[audit_records.Exported]:
        """Every event as stored, oldest first, read in short chunks."""

    def import_(self, events: Iterable[audit_records.Exported]) -> int:
        """Build this ledger, which must not exist yet, from exported events, through the
        same transitions as the write path, in one transaction, and check its chain: all
        of it appears, or nothing (InvalidInput names the refused line). Returns the
        count."""

    def archive(self, request: audit_records.ArchiveRequest) -> audit_records.Moved:
        """Move the events of jobs deleted at or before `request.before` out of the
        ledger, in one transaction that keeps each one's hash and ends with an `archive`
        event and a seal; the file is written (`request.write`) before anything leaves."""

    def migrate(self) -> tuple[int, int]:
        """Create or upgrade the schema: (version before, version now)."""

    def schema_text(self) -> str:
        """The current schema, as this engine's DDL (`evq schema`)."""

    def retry_job(self, job_id: str, new_id: str, reason: str | None) -> str:
        """`retry` for the operator: its own transaction, waiting at most the ledger's
        busy timeout for the write lock; needs no runtime."""

    def cancel_job(self, job_id: str, reason: str | None) -> list[records.Stopped]:
        """`cancel` for the operator (see retry_job)."""

    def pause_queue(self, queue: str, paused: bool, reason: str | None) -> None:
        """Pause (or resume) a queue in a transaction of its own: a `pause` or `resume`
        event, as Context.pause and Context.resume append."""

    def delete_job(self, job_id: str, reason: str | None) -> list[records.Stopped]:
        """`delete` for the operator (see retry_job)."""

    def run_now_job(self, job_id: str, reason: str | None) -> float:
        """Make a pending job due now, in a transaction of its own (a `run_now` event);
        its new run_at. UnknownJob, or JobStateConflict for a job that is not pending."""
