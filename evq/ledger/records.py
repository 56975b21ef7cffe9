"""The records that cross the ledger seam on the runtime side: what callers hand an engine
and what it hands back, typed and engine-neutral (no driver types, no positional rows;
the audit side's are in audit_records.py)."""

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
