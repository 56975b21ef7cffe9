"""Flows, as BullMQ users know them: a tree of jobs across queues, enqueued at once, in
which a parent runs only after its children. `FlowJob` describes a tree; `plan` validates
it into the ledger's terms; a flow's current state is read back as a `FlowTree` (the
ledger's `read_flow`, for `Context.flow` and `evq tree`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs

from .errors import EvqError, FlowError, InvalidInput
from .jobs import JobDefinition
from .ledger.audit_records import FlowTree as FlowTree  # a flow's state as read back re-exported
from .ledger.records import PlannedNode

if TYPE_CHECKING:
    from .registry import Registry

MAX_DEPTH = 64
MAX_NODES = 10_000


@attrs.frozen
class FlowJob:
    """One job of a flow and the children it waits for.

    A child that fails for good (attempts used up, UnrecoverableError, cancelled) leaves
    its parent waiting, visibly (`JobRecord.blocked_by`), until the child is retried or
    deleted (which drops it from the dependencies), unless the child says otherwise:
    fail_parent_on_failure fails the parent too (and so on up the tree),
    ignore_dependency_on_failure lets the parent run anyway (it sees the failure in
    `job.children`), remove_dependency_on_failure drops the child from the parent's
    dependencies. key makes the node idempotent: while a job with that key is live, it
    stands in for this node and its subtree.

    A parent that fails because of a child (fail_parent_on_failure) cancels its
    descendants that have not started (reason parent_failed), as BullMQ users expect of
    a failed flow; those already running finish. keep_children_on_failure=True on the
    parent lets them run on instead."""

    job: str | JobDefinition[Any]
    payload: Any = None
    children: Sequence[FlowJob] = ()
    fail_parent_on_failure: bool = False
    ignore_dependency_on_failure: bool = False
    remove_dependency_on_failure: bool = False
    keep_children_on_failure: bool = False
    key: str | None = None
    delay: float | None = None
    run_at: datetime | str | float | None = None
    priority: int | None = None
    group: str | None = None

    @property
    def on_failure(self) -> str:
        chosen = [name for flag, name in ((self.fail_parent_on_failure, "fail_parent"),
                                          (self.ignore_dependency_on_failure, "ignore"),
                                          (self.remove_dependency_on_failure, "remove"))
                  if flag]
        if len(chosen) > 1:
            raise InvalidInput(
                "choose at most one of fail_parent_on_failure, ignore_dependency_on_failure "
                f"and remove_dependency_on_failure (got {', '.join(chosen)})")
        return chosen[0] if chosen else "wait"


def plan(registry: Registry, node: FlowJob) -> PlannedNode:
    """Validate a whole tree before anything is written; an error names the node."""
    count = [0]
    now = registry.clock.now()

    def visit(node: FlowJob, path: str, depth: int) -> PlannedNode:
        if not isinstance(node, FlowJob):
            raise InvalidInput(f"{path}: a flow is made of FlowJob, got {type(node).__name__}")
        count[0] += 1
        if depth > MAX_DEPTH or count[0] > MAX_NODES:
            raise FlowError(f"a flow may be {MAX_DEPTH} levels deep and hold {MAX_NODES} "
                            "jobs at most; split it")
        try:
            job = registry.prepare(node.job, node.payload, delay=node.delay, run_at=node.run_at,
                              priority=node.priority, key=node.key, group=node.group,
                              now=now)
            on_failure = node.on_failure
            if node.keep_children_on_failure is not False:
                if node.keep_children_on_failure is not True:
                    raise InvalidInput("keep_children_on_failure must be True or False, got "
                                       f"{node.keep_children_on_failure!r}")
                job = attrs.evolve(job, keep_children=True)
            check_children(node.children, "children")
        except EvqError as exc:
            raise type(exc)(f"{path}: {exc}") from None
        children = tuple(visit(child, f"{path}.children[{i}]", depth + 1)
                         for i, child in enumerate(node.children))
        return PlannedNode(job, on_failure, children)

    return visit(node, "flow", 0)


def plan_children(registry: Registry, children: Sequence[FlowJob]) -> tuple[PlannedNode, ...]:
    """Validate children to add to a parent; writes nothing."""
    check_children(children, "add_children's children")
    if not children:
        raise InvalidInput("add_children needs at least one child")
    return tuple(plan(registry, child) for child in children)


def check_children(children: object, what: str) -> None:
    """Children come as a list (or tuple) of FlowJob."""
    if isinstance(children, (str, bytes, FlowJob)) or not isinstance(children, Sequence):
        raise InvalidInput(f"{what} must be a list of FlowJob, got {type(children).__name__}")
