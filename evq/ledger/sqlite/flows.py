"""What a job's end does to the flow around it, decided inside the same transaction.

A child that ends settles its edge to a waiting parent with a `child` event; the parent
then becomes `ready`, keeps waiting (a failed child it must wait for), or fails because of
the child (`fail` without an attempt), which settles the parent's own edge in turn; a
parent failed so cancels its descendants that have not started (unless it was enqueued
with keep_children). A cancelled or deleted parent cancels its descendants that have not
ended. The triggers
only fold these events; every decision is made here and recorded in them."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from ...outcomes import Planned
from . import sql
from .tx import Tx

# What a child's failure makes of its edge, by the edge's on_failure setting.
ON_FAILURE = {"wait": "failed", "fail_parent": "failed", "ignore": "ignored",
              "remove": "removed"}
ENDINGS = ("success", "expire", "fail", "cancel", "delete")


def settle(tx: Tx, child_id: str, succeeded: bool, result: Any = None,
           error: dict[str, Any] | None = None, removed: bool = False) -> None:
    """The child ended: settle its edge to a parent that still waits, if it has one. A
    deleted child is removed from its parent's dependencies (as BullMQ's remove does),
    even one that had failed and blocked the parent."""
    row = tx.one(sql.OPEN_EDGE_OF_CHILD, (child_id,))
    if row is None and removed:
        row = tx.one(sql.FAILED_EDGE_OF_CHILD, (child_id,))
    if row is None:
        return
    parent, on_failure, queue, name, run_at = row
    outcome = ("succeeded" if succeeded else "removed" if removed
               else ON_FAILURE[on_failure])
    data: dict[str, Any] = {"child": child_id, "outcome": outcome}
    if succeeded:
        data["result"] = result
    else:
        data["error"] = error
    tx.append("child", parent, queue, name, data=data)
    if outcome == "failed" and on_failure == "fail_parent":
        message = (error or {}).get("message", "")
        failure = {"type": "ChildFailed", "traceback": "",
                   "message": f"child {child_id} failed for good: {message}".rstrip(": ")}
        tx.append("fail", parent, queue, name,
                  data={"reason": "child_failed", "child": child_id, "error": failure})
        if not tx.one(sql.KEEPS_CHILDREN, (parent,))[0]:
            cancel_unstarted(tx, parent, "parent_failed")
        settle(tx, parent, False, error=failure)
    elif tx.one(sql.UNSETTLED_EDGES, (parent,))[0] == 0:
        tx.append("ready", parent, queue, name, data={"run_at": max(run_at, tx.now)})


def settle_planned(tx: Tx, job_id: str, planned: Sequence[Planned]) -> None:
    """Settle the edge of a job whose reported outcome may have ended it. Every ending
    looks for an edge (an indexed lookup) rather than trusting the caller to know."""
    ending = next((step for step in reversed(planned) if step.kind in ENDINGS), None)
    if ending is None:
        return
    if ending.kind == "success":
        settle(tx, job_id, True, result=ending.data.get("result"))
        return
    error = next((step.data["error"] for step in reversed(planned)
                  if step.data.get("error") is not None), None)
    settle(tx, job_id, False, error=error or ended_by(ending.kind, ending.data.get("reason")),
           removed=ending.kind == "delete")


def ended_by(kind: str, reason: str | None) -> dict[str, Any]:
    """The error a parent sees for a child that was cancelled or deleted."""
    what = {"cancel": "Cancelled", "delete": "Deleted"}.get(kind, kind.title())
    text = f"the job was {what.lower()}" + (f": {reason}" if reason else "")
    return {"type": what, "message": text, "traceback": ""}


def ancestors(conn: sqlite3.Connection, job_id: str) -> list[str]:
    """The job, its parent, that one's parent, ... up to the flow's root (last)."""
    chain = [job_id]
    while (row := conn.execute(sql.PARENT_OF, (chain[-1],)).fetchone()) and row[0]:
        if row[0] in chain:  # a cycle cannot be written; do not loop if one were read
            break
        chain.append(row[0])
    return chain


def live_children(tx: Tx, parent_id: str) -> list[tuple[str, str, str, str]]:
    """(id, queue, name, state) of a parent's children that have not ended."""
    return [tuple(row) for row in tx.rows(sql.LIVE_CHILDREN, (parent_id,))]


def cancel_descendants(tx: Tx, children: list[tuple[str, str, str, str]], parent_id: str,
                       reason: str) -> list[tuple[str, bool]]:
    """Cancel these live children of a parent that was cancelled or deleted, and theirs
    in turn; returns (id, was it running) for each (a running one's worker must stop).
    Each job has one parent, so each is reached once."""
    cancelled: list[tuple[str, bool]] = []
    for child_id, queue, name, state in children:
        data: dict[str, Any] = {"reason": reason, "parent": parent_id}
        tx.append("cancel", child_id, queue, name, data=data)
        cancelled.append((child_id, state == "running"))
        cancelled += cancel_descendants(tx, live_children(tx, child_id), child_id, reason)
    return cancelled


def cancel_unstarted(tx: Tx, parent_id: str, reason: str) -> None:
    """Cancel the descendants of a parent that failed which have not started (pending
    or waiting); running ones run on (their outcome no longer settles anything)."""
    for child_id, queue, name, state in live_children(tx, parent_id):
        if state == "running":
            continue
        tx.append("cancel", child_id, queue, name, data={"reason": reason, "parent": parent_id})
        cancel_unstarted(tx, child_id, reason)
