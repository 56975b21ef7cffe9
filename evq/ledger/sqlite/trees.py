"""Adding flows to the ledger: a whole tree in one transaction, or more children for a
parent that has not started. Jobs are added with `enqueue` events, parent first; then each
parent's `wait` event opens its edges. A node whose idempotency key matches a live job is
that job (its subtree is not added again), linked to its new parent if it has none; the
rules are evq/transitions.py's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from ... import transitions
from ..records import FlowNode, NewJob, PlannedNode
from . import flows, ops, sql
from .tx import Tx


def enqueue_tree(tx: Tx, root: PlannedNode) -> FlowNode:
    plan = _Plan(tx, ancestors=set())
    placed = plan.place(root, parent=None)
    plan.write()
    return placed


def add_children(tx: Tx, parent_id: str, children: tuple[PlannedNode, ...]
                 ) -> list[FlowNode]:
    row = tx.one(sql.JOB_STATE, (parent_id,))
    transitions.check_add_children(parent_id, None if row is None else row[0],
                                   0 if row is None else row[3])
    _, queue, name, _ = row
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
            existing = transitions.stand_in(
                job.key, self.keys, lambda key: ops.live_job_with_key(self.tx, key),
                self.ancestors)
            if existing is not None:
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
