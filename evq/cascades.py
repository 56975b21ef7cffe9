"""Flow cascades: what a job's end does to the flow around it, decided in plain Python.

A child that ends settles its edge to a parent that still waits, with a `child` event on
the parent. The parent then becomes `ready` (no edge of it is open or failed any more),
keeps waiting (a failed child it must wait for), or fails because of the child (its edge
says fail_parent): a `fail` without an attempt, which settles the parent's own edge in
turn, up the tree. A parent failed so cancels its descendants that have not started
(running ones run on), unless it was enqueued with keep_children. A cancelled or deleted
parent cancels every descendant that has not ended.

The decisions read the flow through a `FlowView` (edges, counts and live children as
plain records) and return the events to append, in order. The view shows the ledger as
it is before any of those events is appended; an engine backs it with its reads (lazily:
a job without a parent costs one lookup), appends the events, and records nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from .outcomes import Planned

# What a child's failure makes of its edge, by the edge's on_failure setting.
ON_FAILURE: Mapping[str, str] = {"wait": "failed", "fail_parent": "failed",
                                 "ignore": "ignored", "remove": "removed"}
# The kinds of event that end a job (and so settle its edge).
ENDINGS = frozenset(("success", "expire", "fail", "cancel", "delete"))


class Edge(NamedTuple):
    """A child's edge to its parent, which waits: how the parent treats the child's
    failure, and the parent's queue, name and run_at."""

    parent: str
    on_failure: str
    queue: str
    name: str
    run_at: float


class LiveChild(NamedTuple):
    """A child that has not ended (pending, waiting or running)."""

    id: str
    queue: str
    name: str
    state: str


class Ending(NamedTuple):
    """How a job ended, as the edge to its parent sees it. `removed`: it was deleted,
    which drops it from its parent's dependencies (as BullMQ's remove does)."""

    job_id: str
    succeeded: bool
    result: Any = None
    error: dict[str, Any] | None = None
    removed: bool = False


class FlowEvent(NamedTuple):
    """An event to append on a job of the flow. `running`: a cancel of a job that was
    running (its worker must stop)."""

    kind: str
    job_id: str
    queue: str
    name: str
    data: dict[str, Any]
    running: bool = False


class FlowView(Protocol):
    """What the cascades read, as the ledger holds it before their events."""

    def open_edge(self, child: str) -> Edge | None:
        """The child's open edge to a parent that waits, if any."""

    def failed_edge(self, child: str) -> Edge | None:
        """The child's failed edge to a parent that waits (it blocks that parent)."""

    def unsettled(self, parent: str) -> int:
        """How many of the parent's edges are open or failed."""

    def keeps_children(self, parent: str) -> bool:
        """Whether the parent was enqueued with keep_children."""

    def live_children(self, parent: str) -> Sequence[LiveChild]:
        """The parent's children that have not ended, in the order they were enqueued."""


def ending_of(job_id: str, steps: Sequence[Planned]) -> Ending | None:
    """The end these outcome steps make of a job, or None if they do not end it."""
    for ending in reversed(steps):
        if ending.kind in ENDINGS:
            break
    else:
        return None
    if ending.kind == "success":
        return Ending(job_id, True, ending.data.get("result"))
    error = next((step.data["error"] for step in reversed(steps)
                  if step.data.get("error") is not None), None)
    return Ending(job_id, False, None,
                  error or ended_by(ending.kind, ending.data.get("reason")),
                  ending.kind == "delete")


def ended_by(kind: str, reason: str | None) -> dict[str, Any]:
    """The error a parent sees for a child that was cancelled or deleted."""
    what = {"cancel": "Cancelled", "delete": "Deleted"}.get(kind, kind.title())
    text = f"the job was {what.lower()}" + (f": {reason}" if reason else "")
    return {"type": what, "message": text, "traceback": ""}


def settle(ending: Ending, view: FlowView, now: float) -> list[FlowEvent]:
    """The events a job's end writes on the flow above it (none without a waiting
    parent); `now` is the commit's time (a parent made ready runs no earlier)."""
    edge = _edge(ending, view)
    if edge is None:  # most jobs: no parent
        return []
    events: list[FlowEvent] = []
    ended: set[str] = set()  # failed by this cascade: no longer live for what follows
    while edge is not None:
        failed = _settle_edge(ending, edge, view, now, events, ended)
        if failed is None:
            break
        ending, edge = failed, _edge(failed, view)
    return events


def _edge(ending: Ending, view: FlowView) -> Edge | None:
    edge = view.open_edge(ending.job_id)
    if edge is None and ending.removed:
        edge = view.failed_edge(ending.job_id)
    return edge


def _settle_edge(ending: Ending, edge: Edge, view: FlowView, now: float,
                 events: list[FlowEvent], ended: set[str]) -> Ending | None:
    """Settle one edge; returns the parent's own ending if the child's failure fails it."""
    outcome = ("succeeded" if ending.succeeded else "removed" if ending.removed
               else ON_FAILURE[edge.on_failure])
    data: dict[str, Any] = {"child": ending.job_id, "outcome": outcome}
    if ending.succeeded:
        data["result"] = ending.result
    else:
        data["error"] = ending.error
    parent = edge.parent
    events.append(FlowEvent("child", parent, edge.queue, edge.name, data))
    if outcome == "failed" and edge.on_failure == "fail_parent":
        message = (ending.error or {}).get("message", "")
        failure = {"type": "ChildFailed", "traceback": "",
                   "message": f"child {ending.job_id} failed for good: {message}".rstrip(": ")}
        events.append(FlowEvent("fail", parent, edge.queue, edge.name, {
            "reason": "child_failed", "child": ending.job_id, "error": failure}))
        ended.add(parent)
        if not view.keeps_children(parent):
            _cancel_below(parent, view, "parent_failed", True, events, ended)
        return Ending(parent, False, None, failure)
    # The count is read before this edge settles: a failed edge stays unsettled.
    if view.unsettled(parent) - (outcome != "failed") == 0:
        events.append(FlowEvent("ready", parent, edge.queue, edge.name,
                                {"run_at": max(edge.run_at, now)}))
    return None


def replaced(child: str, edge: Edge, by: str) -> list[FlowEvent]:
    """A failed child that blocks its parent (`edge`, failed) was retried as job `by`:
    the new job takes its place among the parent's dependencies."""
    return [FlowEvent("child", edge.parent, edge.queue, edge.name,
                      {"child": child, "outcome": "replaced", "by": by}),
            FlowEvent("wait", edge.parent, edge.queue, edge.name,
                      {"children": [{"id": by, "on_failure": edge.on_failure}]})]


def cancel_descendants(parent: str, view: FlowView, reason: str) -> list[FlowEvent]:
    """The cancels of a cancelled or deleted parent's descendants that have not ended,
    each followed by those of its own (each job has one parent: each is reached once).
    For a deleted parent, read them before its delete (which takes its edges)."""
    events: list[FlowEvent] = []
    _cancel_below(parent, view, reason, False, events, set())
    return events


def _cancel_below(parent: str, view: FlowView, reason: str, unstarted_only: bool,
                  events: list[FlowEvent], ended: set[str]) -> None:
    for child in view.live_children(parent):
        if child.id in ended or (unstarted_only and child.state == "running"):
            continue
        running = child.state == "running"
        events.append(FlowEvent("cancel", child.id, child.queue, child.name,
                                {"reason": reason, "parent": parent}, running))
        ended.add(child.id)
        _cancel_below(child.id, view, reason, unstarted_only, events, ended)
