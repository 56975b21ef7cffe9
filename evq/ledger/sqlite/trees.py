"""Adding flows to the ledger: a whole tree in one transaction, or more children for a
parent that has not started. Jobs are added with `enqueue` events, parent first; then each
parent's `wait` event opens its edges. A node whose idempotency key matches a live job is
that job (its subtree is not added again), linked to its new parent if it has none."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from ...errors import FlowError, JobStateConflict, UnknownJob
from ..records import FlowNode, NewJob, PlannedNode
from . import flows, ops, sql
from .tx import Tx


def jobs_of(node: PlannedNode) -> list[NewJob]:
    """Every job of a planned tree, parents first."""
    return [node.job, *(job for child in node.children for job in jobs_of(child))]


def enqueue_tree(tx: Tx, root: PlannedNode) -> FlowNode:
    plan = _Plan(tx, ancestors=set())
    placed = plan.place(root, parent=None)
    plan.write()
    return placed


def add_children(tx: Tx, parent_id: str, children: tuple[PlannedNode, ...]
                 ) -> list[FlowNode]:
    row = tx.one(sql.JOB_STATE, (parent_id,))
    if row is None:
        raise UnknownJob(f"no job {parent_id} in the current state")
    state, queue, name, attempt = row
    if state not in ("pending", "waiting") or attempt:
        raise JobStateConflict(
            f"job {parent_id} is {state}" + (f" after {attempt} attempt(s)" if attempt else "")
            + ": children can be added only to a job that has not started (pending, or "
            "waiting for other children)")
    plan = _Plan(tx, ancestors=set(flows.ancestors(tx.conn, parent_id)))
    placed = [plan.place(child, parent=parent_id) for child in children]
    plan.link(parent_id, queue, name, placed, children)
    plan.write()
    return placed


class _Plan:
    """The events of one tree, gathered before any is written so that the enqueues
    come first (parents before children) and the waits after them."""

    def __init__(self, tx: Tx, ancestors: set[str]) -> None:
        self.tx = tx
        self.ancestors = ancestors
        self.new: list[NewJob] = []
        self.keys: dict[str, str] = {}
        self.waits: list[tuple[str, str, str, list[dict[str, Any]]]] = []

    def place(self, node: PlannedNode, parent: str | None) -> FlowNode:
        job = node.job
        if job.key is not None:
            existing = self.keys.get(job.key)
            if existing is None:
                found = self.tx.one(sql.LIVE_JOB_WITH_KEY, (job.key,))
                existing = found[0] if found else None
            if existing is not None:
                if existing in self.keys.values():
                    raise FlowError(f"the key {job.key!r} is given to two jobs of one flow; "
                                    "a job has one place in a flow")
                if existing in self.ancestors:
                    raise FlowError(f"job {existing} (key {job.key!r}) is an ancestor of "
                                    "its new parent: a flow cannot be a cycle")
                return FlowNode(existing, job.name, job.queue, added=False)
            self.keys[job.key] = job.id
        self.new.append(attrs.evolve(job, parent=parent))
        children = tuple(self.place(child, parent=job.id) for child in node.children)
        self.link(job.id, job.queue, job.name, children, node.children)
        return FlowNode(job.id, job.name, job.queue, added=True, children=children)

    def link(self, parent: str, queue: str, name: str, placed: Sequence[FlowNode],
             nodes: Sequence[PlannedNode]) -> None:
        """The parent's `wait` for these children, leaving out any that a key matched
        to a job already waited for by this same parent (adding it again is a no-op)."""
        edges = [{"id": child.id, "on_failure": node.on_failure}
                 for child, node in zip(placed, nodes, strict=True)
                 if child.added or self.tx.one(sql.PARENT_OF, (child.id,))[0] != parent]
        if edges:
            self.waits.append((parent, queue, name, edges))

    def write(self) -> None:
        if self.new:
            ops.enqueue(self.tx, self.new)
        for parent, queue, name, edges in self.waits:
            self.tx.append("wait", parent, queue, name, data={"children": edges})
