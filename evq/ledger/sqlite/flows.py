"""What a job's end does to the flow around it, written inside the same transaction.

The decisions are evq/cascades.py's (child done; parent ready, still waiting, or failed
by the child; descendants cancelled): here they read the flow through `View`, and their
events are appended in the order they come. The triggers only fold those events."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ...cascades import Edge, Ending, FlowEvent, LiveChild, ending_of
from ...cascades import settle as cascade
from ...outcomes import Planned
from . import sql
from .tx import Tx


class View:
    """The flow as this transaction reads it (the cascades' `FlowView`)."""

    __slots__ = ("tx",)

    def __init__(self, tx: Tx) -> None:
        self.tx = tx

    def open_edge(self, child: str) -> Edge | None:
        row = self.tx.one(sql.OPEN_EDGE_OF_CHILD, (child,))
        return None if row is None else Edge._make(row)

    def failed_edge(self, child: str) -> Edge | None:
        row = self.tx.one(sql.FAILED_EDGE_OF_CHILD, (child,))
        return None if row is None else Edge._make(row)

    def unsettled(self, parent: str) -> int:
        return int(self.tx.one(sql.UNSETTLED_EDGES, (parent,))[0])

    def keeps_children(self, parent: str) -> bool:
        return bool(self.tx.one(sql.KEEPS_CHILDREN, (parent,))[0])

    def live_children(self, parent: str) -> list[LiveChild]:
        return [LiveChild._make(row) for row in self.tx.rows(sql.LIVE_CHILDREN, (parent,))]


def append(tx: Tx, events: Sequence[FlowEvent]) -> None:
    """Append a decision's events, in order."""
    for event in events:
        tx.append(event.kind, event.job_id, event.queue, event.name, data=event.data)


def settle(tx: Tx, ending: Ending) -> None:
    """The job ended: settle its edge to a parent that still waits, if it has one, and
    what follows from that up the tree."""
    append(tx, cascade(ending, View(tx), tx.now))


def settle_planned(tx: Tx, job_id: str, planned: Sequence[Planned]) -> None:
    """Settle the edge of a job whose reported outcome may have ended it. Every ending
    looks for an edge (an indexed lookup) rather than trusting the caller to know."""
    ending = ending_of(job_id, planned)
    if ending is not None:
        settle(tx, ending)


def ancestors(conn: sqlite3.Connection, job_id: str) -> list[str]:
    """The job, its parent, that one's parent, ... up to the flow's root (last)."""
    chain = [job_id]
    while (row := conn.execute(sql.PARENT_OF, (chain[-1],)).fetchone()) and row[0]:
        if row[0] in chain:  # a cycle cannot be written; do not loop if one were read
            break
        chain.append(row[0])
    return chain
