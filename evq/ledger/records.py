"""The records that cross the ledger seam: what callers hand an engine and what it hands
back, typed and engine-neutral (no driver types, no positional rows)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from queue import SimpleQueue
from typing import Any, NamedTuple, Protocol

import attrs

from ..errors import InvalidInput
from ..jobs import Child, JobRecord
from ..outcomes import Planned
from ..schedules import Schedule

Positions = tuple[int, int]  # first and last position, inclusive


@attrs.frozen
class Attempt:
    """Who holds which attempt of which job: the fencing token of every report."""

    job_id: str
    queue: str
    name: str
    attempt: int
    worker: str


@attrs.frozen
class Claimed:
    """A job this worker now holds, with what its handler needs."""

    id: str
    queue: str
    name: str
    attempt: int
    errors: int
    max_attempts: int | None
    priority: int
    run_at: float
    enqueued_at: float
    payload: Any
    lease_until: float
    children: tuple[Child, ...] = ()


@attrs.define
class NewJob:
    """A job to enqueue, already validated: ids, names, times and JSON are final. (Not
    frozen: a frozen attrs class sets each field through object.__setattr__, which costs
    a bulk enqueue half a microsecond per job. Nothing changes one.)"""

    id: str
    queue: str
    name: str
    payload: Any
    run_at: float
    priority: int
    max_attempts: int | None
    key: str | None = None
    group: str | None = None
    payload_json: str | None = None
    retry_of: str | None = None
    parent: str | None = None
    keep_children: bool = False  # a flow's parent: its children run on if it fails

    def event_text(self) -> str | None:
        """The enqueue event's data as JSON text, reusing the payload's text encoded at
        validation (the payload is the bulk of it; encoding it twice costs)."""
        if (self.payload_json is None or self.key is not None or self.group is not None
                or self.retry_of is not None or self.parent is not None
                or self.keep_children):
            return None
        attempts = "null" if self.max_attempts is None else int(self.max_attempts)
        return (f'{{"payload":{self.payload_json},"run_at":{float(self.run_at)!r},'
                f'"priority":{int(self.priority)},"max_attempts":{attempts}}}')

    def event_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "payload": self.payload,
            "run_at": self.run_at,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
        }
        if self.key is not None:
            data["key"] = self.key
        if self.group is not None:
            data["group"] = self.group
        if self.retry_of is not None:
            data["retry_of"] = self.retry_of
        if self.parent is not None:
            data["parent"] = self.parent
        if self.keep_children:
            data["keep_children"] = True
        return data


@attrs.frozen
class Rescue:
    """What to write for an expired lease (decided outside the transaction: it runs the
    job's backoff), applied by `rescue` only if that lease is still the one that ran out."""

    lease: Expired
    steps: tuple[Planned, ...]


@attrs.frozen
class Expired:
    """A running job whose lease ran out, as a claim found it."""

    job_id: str
    queue: str
    name: str
    attempt: int
    errors: int
    max_attempts: int | None
    holder: str
    lease_until: float


@attrs.frozen
class Fired:
    name: str
    kind: str  # schedule, schedule_orphan, registered, or schedule_failed
    due_at: float | None
    next_at: float
    job_id: str | None = None
    missed: int = 0


@attrs.frozen
class Holder:
    """Who last announced a worker name: where it ran, and when it was last seen."""

    host: str | None
    pid: int | None
    last_seen: float


@attrs.frozen
class FlowNode:
    """Where a node of the tree went: its job id, and whether it was added now (False:
    its key named a live job, which stands in for it)."""

    id: str
    name: str
    queue: str
    added: bool
    children: tuple[FlowNode, ...] = ()


@attrs.frozen
class PlannedNode:
    """One validated job of a tree, with how its parent treats its failure."""

    job: NewJob
    on_failure: str
    children: tuple[PlannedNode, ...] = ()

    def jobs(self) -> list[NewJob]:
        """Every job of this planned tree, parents first."""
        return [self.job, *(job for child in self.children for job in child.jobs())]


class Durability(enum.StrEnum):
    """How much a commit survives. PROCESS (the default) survives any crash of any
    process; POWER also survives power loss or an OS crash, at the cost of an fsync per
    commit."""

    PROCESS = "process"
    POWER = "power"


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


class Committed(NamedTuple):
    """One event as its commit appended it, handed to subscribers after the commit."""

    position: int
    at: float
    kind: str
    job_id: str | None
    queue: str | None
    job: str | None
    attempt: int | None
    worker: str | None
    data: dict[str, Any]
    v: int


JobFeed = SimpleQueue["list[NewJob] | BaseException | None"]


@attrs.frozen
class Stopped:
    """A job a cancel or delete ended, and whether a worker was running it."""

    job_id: str
    was_running: bool


@attrs.frozen
class Announce:
    """A worker coming up: the names it may take (the first one no live worker holds),
    whether it insists on one, the job names it runs, the queues whose jobs a previous
    worker of its name left running go back, and how to tell a holder has stopped."""

    candidates: tuple[str, ...]
    chosen: str | None
    names: tuple[str, ...]
    restart_queues: tuple[str, ...]
    holder_gone: Callable[[str, Holder, float], bool]
    taking: Callable[[str], None]  # told the name inside the transaction, before commit


@attrs.frozen
class Announced:
    name: str
    released: tuple[str, ...]
    at: float


@attrs.frozen
class ClaimRequest:
    """What a worker asks for: at most `limit` due jobs of `names` in `queues` (highest
    priority first, then the earliest due), within each queue's concurrency limit and one
    per group; leases of
    `lease_for[name]` seconds; jobs in `run_later` get no `run` event yet (their
    okay_to_run is asked first). `see_names`: renew the worker's registry entry too."""

    worker: str
    queues: tuple[str, ...]
    names: tuple[str, ...]
    limit: int
    lease_for: Mapping[str, float]
    queue_limits: Mapping[str, int]
    run_later: frozenset[str]
    see_names: tuple[str, ...] | None = None

    def __attrs_post_init__(self) -> None:
        if not self.lease_for.keys() >= set(self.names):
            missing = sorted(set(self.names) - self.lease_for.keys())
            raise InvalidInput(f"a claim must give the lease of every job name it takes; "
                               f"missing: {', '.join(missing)}")


@attrs.frozen
class ClaimResult:
    """The jobs taken, when to look again (None: when woken), the leases found expired,
    and the transaction's time."""

    claimed: list[Claimed]
    next_at: float | None
    expired: list[Expired]
    at: float


@attrs.frozen
class Beat:
    """A running attempt whose lease should now run `lease` seconds from the commit."""

    held: Attempt
    lease: float


# --- subscribers side (helper S) ---
@attrs.frozen
class SubscriberState:
    """Where a durable handler stands: its position, the ledger's head, how far behind."""

    name: str
    position: int
    head: int
    holder: str | None
    updated_at: float

    @property
    def lag(self) -> int:
        return max(0, self.head - self.position)


@attrs.frozen
class CursorLease:
    """Who holds a durable handler's name (None: nobody) and until when."""

    holder: str | None
    lease_until: float | None


class ProducerSession(Protocol):
    """Writes from synchronous code, without the runtime's writer (`Context.sync()`):
    each call is one transaction, all of it or none; thread-safe. Raises ContextClosed
    once closed."""

    def enqueue(self, jobs: Sequence[NewJob]) -> list[str]: ...

    def reject(self, jobs: Sequence[NewJob], reasons: Mapping[str, str]) -> None: ...

    def enqueue_tree(self, root: PlannedNode) -> FlowNode: ...

    def add_children(self, parent_id: str, children: Sequence[PlannedNode]
                     ) -> list[FlowNode]: ...

    def close(self) -> None: ...


# --- audit side (helper R) ---
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
class Deployed:
    """A deployed job definition: its settings as recorded, and its schedule's spec and
    next fire (a stored epoch time, shown as it is) if it repeats."""

    name: str
    queue: str
    settings: dict[str, Any]
    schedule: str | None = None
    next_at: Any = None


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


# --- the leader's services and the runtime's maintenance ---
class Deployment(NamedTuple):
    """What `deploy` records of one definition: its queue and the settings other
    processes need."""

    queue: str
    settings: dict[str, Any]


class LocalSchedule(NamedTuple):
    """A repeating job this process defines: its queue and when it repeats."""

    queue: str
    schedule: Schedule


class CleanupRule(NamedTuple):
    """Remove jobs of `queue` that ended in one of `states` over `older_than` seconds
    ago."""

    queue: str
    states: tuple[str, ...]
    older_than: float


class HookTaken(NamedTuple):
    """The job whose exhausted-attempts hook a runner now holds (as it stood before the
    take), or None, with when the next runner's lease runs out."""

    record: JobRecord | None
    next_at: float | None


class ExpiredLeases(NamedTuple):
    """Running jobs whose lease ran out, and until when a lock stall keeps others from
    rescue (None: none is kept)."""

    leases: list[Expired]
    protected_until: float | None
