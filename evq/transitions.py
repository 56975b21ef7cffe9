"""The rules of the transitions people and flows ask for, in plain Python: which jobs may
be cancelled, deleted or retried, which may take children, and idempotency (a job whose
key matches a live job is that job). The database enforces the same rules where the
data lives (the SQLite engine's guard trigger refuses a cancel of a job that has ended
and a delete of a running one); these functions are what an engine's own code decides
with, before it writes."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping
from typing import Any, Protocol, TypeVar

from .errors import FlowError, JobStateConflict, UnknownJob

# A job that has not ended: a key names at most one of these, and cancel takes them.
LIVE = frozenset(("pending", "waiting", "running"))
CANCELLABLE = LIVE
# A job that ended badly runs again, as a new job, on retry.
RETRYABLE = frozenset(("failed", "expired", "cancelled"))
# A job that has not started (and has no attempt behind it) may take children.
TAKES_CHILDREN = frozenset(("pending", "waiting"))


def may_delete(state: str, by_holder: bool) -> bool:
    """Delete takes a job that is not running, or a running one from the holder of its
    attempt (the handler's job.delete())."""
    return state != "running" or by_holder


def cancel_data(reason: str | None, state: str | None, worker: str | None
                ) -> dict[str, Any]:
    """The `cancel` event's data: why, and which worker must stop if it was running."""
    data: dict[str, Any] = {"reason": reason}
    if state == "running":
        data["running_on"] = worker
    return data


def check_run_now(job_id: str, state: str | None) -> None:
    """Refuse (typed) making a job due now unless it is pending (delayed, or due)."""
    if state is None:
        raise UnknownJob(f"no job {job_id} in the current state; see `evq history {job_id}`")
    if state != "pending":
        raise JobStateConflict(
            f"job {job_id} is {state}: only a pending job (one waiting for its time) can "
            "be made to run now")


def check_retry(job_id: str, state: str | None, children: int) -> None:
    """Refuse (typed) a retry of a job that is not in the current state (`state` None),
    has not ended badly, or waited for children."""
    if state is None:
        raise UnknownJob(f"no job {job_id} in the current state (deleted jobs cannot be "
                         "retried; their events are in `evq history`)")
    if state not in RETRYABLE:
        raise JobStateConflict(
            f"job {job_id} is {state}; only failed, expired or cancelled jobs are retried")
    if children:
        raise JobStateConflict(
            f"job {job_id} waited for children: run alone it would not have their results. "
            "Retry the child that failed while its parent waits, or enqueue the flow again "
            "(nodes with keys reuse the jobs that are still live)")


def check_add_children(job_id: str, state: str | None, attempt: int) -> None:
    """Refuse (typed) children for a job that is not in the current state or has
    started."""
    if state is None:
        raise UnknownJob(f"no job {job_id} in the current state")
    if state not in TAKES_CHILDREN or attempt:
        raise JobStateConflict(
            f"job {job_id} is {state}" + (f" after {attempt} attempt(s)" if attempt else "")
            + ": children can be added only to a job that has not started (pending, or "
            "waiting for other children)")


class Keyed(Protocol):
    """A job to enqueue, as idempotency sees it."""

    @property
    def id(self) -> str: ...

    @property
    def key(self) -> str | None: ...


J = TypeVar("J", bound=Keyed)


def keyed(jobs: Iterable[J], live_with_key: Callable[[str], str | None]
          ) -> tuple[list[str], list[J]]:
    """Idempotency for an enqueue: (each job's id, the jobs to add). A job whose key
    matches a live job (`live_with_key`, asked once per key) or an earlier job of the
    same batch is not added: its id is that job's."""
    ids: list[str] = []
    fresh: list[J] = []
    seen: dict[str, str] = {}
    for job in jobs:
        key = job.key
        if key is not None:
            existing = seen.get(key)
            if existing is None:
                existing = live_with_key(key)
            if existing is not None:
                ids.append(existing)
                continue
            seen[key] = job.id
        fresh.append(job)
        ids.append(job.id)
    return ids, fresh


def stand_in(key: str, placed: Mapping[str, str], live_with_key: Callable[[str], str | None],
             ancestors: Container[str]) -> str | None:
    """Idempotency for a node of a flow: the live job with its key, which stands in for
    the node and its subtree, or None (add the node). `placed` maps the keys of the
    flow's nodes added so far to their ids; `ancestors` are the new parent's. Refused: a
    key given to two nodes of one flow (a job has one place in a flow), and a job that
    is an ancestor of its new parent (a flow cannot be a cycle)."""
    existing = placed.get(key)
    if existing is None:
        existing = live_with_key(key)
    if existing is None:
        return None
    if existing in placed.values():
        raise FlowError(f"the key {key!r} is given to two jobs of one flow; "
                        "a job has one place in a flow")
    if existing in ancestors:
        raise FlowError(f"job {existing} (key {key!r}) is an ancestor of "
                        "its new parent: a flow cannot be a cycle")
    return existing
