"""The records of the audit side of the seam: what verify, replay, export and import,
archive and the CLI's reads hand back, engine-neutral (see records.py for the runtime's)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import attrs

from ..jobs import Child, JobRecord
from .records import Positions


@attrs.frozen
class ChainCheck:
    """What checking the chain found. `problem` and `position` name the first thing that
    does not hold (None when all holds); `events` counts the rows in the ledger, seals
    included (what `evq export` writes), `seals` the seals among them and `head` is the
    newest seal's hash. `checked` archived events were checked against their files;
    `unchecked` are the positions of archived events that were not (no file); `blind`
    the scheme-1 commits (first event, seal) that could not be recomputed for want of
    an archive file; `after_head` the archive events after the trusted head with the
    positions at or before it that they claim."""

    events: int
    seals: int
    head: str
    problem: str | None = None
    position: int | None = None
    checked: int = 0
    unchecked: tuple[Positions, ...] = ()
    blind: tuple[Positions, ...] = ()
    after_head: tuple[tuple[int, tuple[Positions, ...]], ...] = ()

    @property
    def ok(self) -> bool:
        """Nothing failed (some events may still not have been checked)."""
        return self.problem is None

    @property
    def complete(self) -> bool:
        """Nothing failed and every event was checked."""
        return self.ok and not self.unchecked and not self.blind

    @property
    def unchecked_events(self) -> int:
        return sum(high - low + 1 for low, high in self.unchecked)


@attrs.frozen
class ArchiveFile:
    """An archive file as given to verify: its name, SHA-256 and events by position."""

    name: str
    sha256: str
    rows: dict[int, tuple[Any, ...]]


@attrs.frozen
class Claim:
    """What one `archive` event says it moved out of the ledger."""

    position: int  # the archive event's own
    ranges: tuple[Positions, ...]
    sha256: str  # of its archive file
    keeps_hashes: bool  # written since schema 4: the hash of each event is kept


@attrs.frozen
class ReplayCheck:
    """What replay found: rows only in the rebuilt projection and rows only in the stored
    one (both empty when the ledger is consistent)."""

    events: int
    only_rebuilt: list[tuple[Any, ...]]
    only_stored: list[tuple[Any, ...]]
    refused_at: int | None = None  # an event the transitions refuse: illegal history
    refusal: str | None = None

    @property
    def ok(self) -> bool:
        return not self.only_rebuilt and not self.only_stored and self.refused_at is None


class StoredEvent(NamedTuple):
    """One event exactly as stored: its data as the JSON text the chain hashed and its
    time as the float it was stamped with (the export and archive formats are these
    fields, in this order)."""

    position: int
    at: float
    kind: str
    job_id: str | None
    queue: str | None
    job: str | None
    attempt: int | None
    worker: str | None
    data: str
    v: int


@attrs.frozen
class Exported:
    """An event as export writes it and import reads it: with, for an `archive` event,
    the (position, hash) kept of each event it removed; `line` is where an imported one
    came from (for messages)."""

    event: StoredEvent
    kept: tuple[tuple[int, str], ...] = ()
    line: int = 0


@attrs.frozen
class JobFilter:
    """Which current jobs to list: in this state, of this queue, only the newest
    `limit` (None: all); they come back oldest first."""

    state: str | None = None
    queue: str | None = None
    limit: int | None = None


@attrs.frozen
class JobQuery:
    """A page of current jobs, newest first (in enqueue order): each criterion None
    matches any job. `before`: only jobs enqueued at an earlier position (the next page
    starts at the last one shown); `since`/`until`: enqueued within these epoch times;
    `text`: the enqueue event's data (the payload and options, as stored JSON) holds this
    text. `scan`: look at no more than this many of the newest jobs in the state (or of
    any state) before `before` (None: at all of them), so that criteria no index serves
    (queue, name, times, text) take a bounded time; the page says where it stopped. A
    query with no such criterion reads its state's index alone and needs no bound."""

    state: str | None = None
    queue: str | None = None
    name: str | None = None
    before: int | None = None
    since: float | None = None
    until: float | None = None
    text: str | None = None
    limit: int = 50
    scan: int | None = None


@attrs.frozen
class JobPage:
    """The jobs a JobQuery found, newest first, and `searched_to`: when the search
    stopped at `scan` jobs with the page not full, the enqueue position of the oldest job
    it looked at (search again before it for older matches); None when no job older than
    the page's last was left unexamined."""

    jobs: list[JobRecord]
    searched_to: int | None = None


@attrs.frozen
class StorageSize:
    """How much room the ledger takes: all of it (for SQLite, the file and its WAL; for
    PostgreSQL, the schema's tables and indexes), and the part that is write-ahead log
    not yet checkpointed into the file (None where the engine has no such part of its
    own: PostgreSQL's WAL is the server's)."""

    total_bytes: int
    wal_bytes: int | None


@attrs.frozen
class WorkerSeen:
    """A worker as it last announced itself: the jobs it can run, when it was last
    seen (epoch seconds) and where it runs."""

    name: str
    jobs: tuple[str, ...]
    last_seen: float
    host: str | None
    pid: int | None


@attrs.frozen
class Deployed:
    """A deployed job definition: its settings as recorded, and its schedule's spec, next
    fire (a stored epoch time, shown as it is) and last fire (None before the first) if it
    repeats."""

    name: str
    queue: str
    settings: dict[str, Any]
    schedule: str | None = None
    next_at: Any = None
    last_at: float | None = None


@attrs.frozen
class LedgerCheck:
    """What `verify` found. `damage`: what the storage's own integrity check (named by
    `checked_by`) says is wrong, with `damaged_parts` the tables it blames; then nothing
    else was checked. Otherwise `rules_off` names the append-only guards found missing,
    `chain` is the hash chain's check and `replay` the comparison of the replayed
    events with the stored state."""

    checked_by: str
    damage: tuple[str, ...] = ()
    damaged_parts: tuple[str, ...] = ()
    rules_off: tuple[str, ...] = ()
    chain: ChainCheck | None = None
    replay: ReplayCheck | None = None


@attrs.frozen
class ArchiveRequest:
    """What `archive` moves out: the events of the jobs deleted at or before `before`
    that `choose(deleted, flow_edges)` lets go (flow_edges: (parent, child) of every
    `wait` event still in the ledger). `write(events)` is called inside the transaction,
    before anything leaves the ledger: it makes the archive file durable and returns its
    SHA-256; `name` is the file's name, recorded in the `archive` event."""

    before: float
    name: str
    write: Callable[[Sequence[StoredEvent]], str]
    choose: Callable[[set[str], Sequence[tuple[str, str]]], list[str]]
    now: float | None = None


@attrs.frozen
class Moved:
    """What `archive` moved out of the ledger (0 events: nothing, and no file written)."""

    events: int
    jobs: int
    sha256: str


class JobLabel(NamedTuple):
    """What to call a job people must choose between: its name and its state (or, for a
    job no longer in the current state, what last happened to it)."""

    name: str
    state: str


@attrs.frozen
class FlowTree:
    """A flow's current state: a job, the edge to its parent, and its children. A child
    that cleanup removed from the current state has job=None (its edge keeps its name,
    result and error)."""

    id: str
    name: str
    queue: str
    job: JobRecord | None
    edge: Child | None
    children: tuple[FlowTree, ...] = ()

    @property
    def state(self) -> str:
        return str(self.job.state) if self.job is not None else "deleted"

    @property
    def result(self) -> Any:
        return self.job.result if self.job else self.edge.result if self.edge else None

    @property
    def error(self) -> dict[str, Any] | None:
        return self.job.error if self.job else self.edge.error if self.edge else None

    def walk(self) -> list[FlowTree]:
        """This node and every node below it, depth first."""
        return [self, *(node for child in self.children for node in child.walk())]
