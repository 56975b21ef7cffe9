"""The records that cross the ledger seam: what callers hand an engine and what it hands
back, typed and engine-neutral (no driver types, no positional rows)."""

from __future__ import annotations

import enum
from typing import Any

import attrs

from ..jobs import Child
from ..outcomes import Planned

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
