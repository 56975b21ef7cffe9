"""Which due jobs a claim takes, decided in plain Python over the candidates an engine
read: a queue with a concurrency limit gets no more than its room (the limit minus its
jobs running now, in any process); at most one job of a group is taken (the engine's
read already leaves out groups with a job running); across queues, the oldest priority
first: higher priority, then earlier run_at, then enqueue order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

# When one queue's jobs were cut down by one per group, how much further (this many
# times the room) the engine looks, so that one group at the head of a queue does not
# hide the jobs behind it.
LOOK_FURTHER = 8


class Candidate(NamedTuple):
    """A due job as an engine read it for a claim, in the claim's order."""

    id: str
    queue: str
    name: str
    attempt: int
    errors: int
    max_attempts: int | None
    priority: int
    run_at: float
    enqueued_at: float
    data: Any  # the job's enqueue event data, as the engine stores it
    position: int  # of the enqueue event: ties of priority and run_at go in this order
    group: str | None
    children: int  # how many children the job waited for


def room(limit: int, queue_limit: int | None, running: int) -> int:
    """How many jobs a claim of `limit` may take from a queue with this concurrency limit
    (None: none) and `running` jobs running now; 0 or less takes none."""
    return limit if queue_limit is None else min(limit, queue_limit - running)


def one_per_group(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates in order, leaving out every one whose group an earlier one has."""
    seen: set[str] = set()
    kept = []
    for candidate in candidates:
        group = candidate.group
        if group is not None:
            if group in seen:
                continue
            seen.add(group)
        kept.append(candidate)
    return kept


def look_further(found: int, kept: int, room: int) -> bool:
    """Whether to read the queue again, LOOK_FURTHER times deeper: the read was full
    (`found` == `room`) and one per group left out some of it."""
    return kept < found == room


def merge(chosen: Sequence[list[Candidate]], limit: int) -> list[Candidate]:
    """The jobs to take, from each queue's choice (each in the claim's order, one per
    group, within its room): all of them in the claim's order, one per group across
    queues, at most `limit`."""
    if len(chosen) == 1:
        only = chosen[0]
        return only if len(only) <= limit else only[:limit]
    merged = [candidate for kept in chosen for candidate in kept]
    merged.sort(key=_order)
    kept = one_per_group(merged)
    del kept[limit:]
    return kept


def _order(candidate: Candidate) -> tuple[int, float, int]:
    return -candidate.priority, candidate.run_at, candidate.position
