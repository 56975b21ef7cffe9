"""Flow cascades are pure: a child's end, decided over a flow held in plain dicts, gives
the parent's events (child done; ready, still waiting, or failed) and the cancels of the
descendants, with no database."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import attrs
from hypothesis import given
from hypothesis import strategies as st

from evq import cascades
from evq.cascades import Edge, Ending, FlowEvent, LiveChild
from evq.outcomes import Planned

NOW = 1000.0


@attrs.define
class Flow:
    """A flow as plain data: jobs (id -> state), each child's parent and on_failure, the
    edges' states, and who keeps children. Implements cascades.FlowView."""

    states: dict[str, str] = attrs.field(factory=dict)
    parent_of: dict[str, str] = attrs.field(factory=dict)
    on_failure: dict[str, str] = attrs.field(factory=dict)
    edge_state: dict[str, str] = attrs.field(factory=dict)  # by child
    keeps: set[str] = attrs.field(factory=set)
    reads: list[str] = attrs.field(factory=list)

    def job(self, job_id: str, state: str = "pending", parent: str | None = None,
            on_failure: str = "wait") -> Flow:
        self.states[job_id] = state
        if parent is not None:
            self.parent_of[job_id] = parent
            self.on_failure[job_id] = on_failure
            self.edge_state[job_id] = "open"
            if self.states[parent] == "pending":
                self.states[parent] = "waiting"
        return self

    def _edge(self, child: str, state: str) -> Edge | None:
        parent = self.parent_of.get(child)
        if parent is None or self.edge_state[child] != state \
                or self.states[parent] != "waiting":
            return None
        return Edge(parent, self.on_failure[child], "q", f"name-{parent}", 500.0)

    def open_edge(self, child: str) -> Edge | None:
        self.reads.append(f"open_edge {child}")
        return self._edge(child, "open")

    def failed_edge(self, child: str) -> Edge | None:
        self.reads.append(f"failed_edge {child}")
        return self._edge(child, "failed")

    def unsettled(self, parent: str) -> int:
        self.reads.append(f"unsettled {parent}")
        return sum(1 for child, p in self.parent_of.items()
                   if p == parent and self.edge_state[child] in ("open", "failed"))

    def keeps_children(self, parent: str) -> bool:
        return parent in self.keeps

    def live_children(self, parent: str) -> Sequence[LiveChild]:
        self.reads.append(f"live_children {parent}")
        return [LiveChild(child, "q", f"name-{child}", self.states[child])
                for child, p in self.parent_of.items()
                if p == parent and self.states[child] in ("pending", "waiting", "running")]

    def apply(self, events: Sequence[FlowEvent]) -> None:
        """Fold the events as the ledger would."""
        for event in events:
            if event.kind == "child":
                self.edge_state[event.data["child"]] = event.data["outcome"]
            elif event.kind == "ready":
                self.states[event.job_id] = "pending"
            elif event.kind == "fail":
                self.states[event.job_id] = "failed"
            elif event.kind == "cancel":
                self.states[event.job_id] = "cancelled"


def kinds(events: Sequence[FlowEvent]) -> list[tuple[str, str]]:
    return [(event.kind, event.job_id) for event in events]


def end(flow: Flow, job_id: str, state: str, ending: Ending) -> list[FlowEvent]:
    flow.states[job_id] = state
    events = cascades.settle(ending, flow, NOW)
    flow.apply(events)
    return events


def test_a_job_without_a_parent_costs_one_lookup_and_writes_nothing():
    flow = Flow().job("alone", "running")
    assert end(flow, "alone", "succeeded", Ending("alone", True, 1)) == []
    assert flow.reads == ["open_edge alone"]


def test_the_last_child_to_succeed_makes_its_parent_ready_no_earlier_than_now():
    flow = Flow().job("p").job("a", parent="p").job("b", parent="p")
    first = end(flow, "a", "succeeded", Ending("a", True, {"x": 1}))
    assert first == [FlowEvent("child", "p", "q", "name-p",
                               {"child": "a", "outcome": "succeeded", "result": {"x": 1}})]
    second = end(flow, "b", "succeeded", Ending("b", True, 2))
    assert kinds(second) == [("child", "p"), ("ready", "p")]
    assert second[1].data == {"run_at": NOW}  # the parent's run_at (500) has passed


def test_a_failed_child_keeps_its_parent_waiting_unless_its_edge_says_otherwise():
    error = {"type": "E", "message": "boom", "traceback": ""}
    for on_failure, outcome, ready in (("wait", "failed", False), ("ignore", "ignored", True),
                                       ("remove", "removed", True)):
        flow = Flow().job("p").job("c", parent="p", on_failure=on_failure)
        events = end(flow, "c", "failed", Ending("c", False, None, error))
        assert events[0].data == {"child": "c", "outcome": outcome, "error": error}
        assert [e.kind for e in events] == ["child", "ready"] if ready else ["child"]


def test_fail_parent_fails_up_the_tree_and_cancels_what_has_not_started():
    flow = (Flow().job("root").job("mid", parent="root", on_failure="fail_parent")
            .job("sibling", parent="root")
            .job("bad", parent="mid", on_failure="fail_parent")
            .job("waiting", parent="mid").job("under", parent="waiting")
            .job("busy", "running", parent="mid"))
    error = {"type": "E", "message": "boom", "traceback": ""}
    events = end(flow, "bad", "failed", Ending("bad", False, None, error))
    assert kinds(events) == [
        ("child", "mid"), ("fail", "mid"),
        ("cancel", "waiting"), ("cancel", "under"),  # busy runs on
        ("child", "root"), ("fail", "root"),
        ("cancel", "sibling"),  # mid is already failed: not cancelled again
    ]
    fail = events[1].data
    assert fail["reason"] == "child_failed" and fail["child"] == "bad"
    assert fail["error"]["message"] == "child bad failed for good: boom"
    assert events[2].data == {"reason": "parent_failed", "parent": "mid"}
    assert events[4].data["error"] == fail["error"]  # the parent's failure, upward
    assert flow.states["busy"] == "running"


def test_a_parent_with_keep_children_lets_them_run_on():
    flow = (Flow().job("p").job("bad", parent="p", on_failure="fail_parent")
            .job("other", parent="p"))
    flow.keeps.add("p")
    events = end(flow, "bad", "failed", Ending("bad", False))
    assert kinds(events) == [("child", "p"), ("fail", "p")]
    assert events[1].data["error"]["message"] == "child bad failed for good"


def test_a_deleted_child_is_removed_even_from_a_failed_edge():
    flow = Flow().job("p").job("c", parent="p")
    end(flow, "c", "failed", Ending("c", False))
    assert flow.edge_state["c"] == "failed"
    events = end(flow, "c", "deleted", Ending("c", False, None, None, removed=True))
    assert kinds(events) == [("child", "p"), ("ready", "p")]
    assert events[0].data["outcome"] == "removed"


def test_a_failed_child_retried_is_replaced_by_the_new_job():
    edge = Edge("p", "fail_parent", "q", "parent", 5.0)
    assert cascades.replaced("old", edge, "new") == [
        FlowEvent("child", "p", "q", "parent",
                  {"child": "old", "outcome": "replaced", "by": "new"}),
        FlowEvent("wait", "p", "q", "parent",
                  {"children": [{"id": "new", "on_failure": "fail_parent"}]}),
    ]


def test_cancelling_a_parent_cancels_every_live_descendant_and_says_which_ran():
    flow = (Flow().job("p", "waiting").job("a", parent="p").job("a1", "running", parent="a")
            .job("b", "succeeded", parent="p"))
    events = cascades.cancel_descendants("p", flow, "parent_cancelled")
    assert [(e.job_id, e.running) for e in events] == [("a", False), ("a1", True)]
    assert events[1].data == {"reason": "parent_cancelled", "parent": "a"}


def test_the_ending_of_reported_steps():
    assert cascades.ending_of("j", [Planned("error", {"retry_at": 5})]) is None
    assert cascades.ending_of("j", [Planned("success", {"result": 3})]) == Ending("j", True, 3)
    error = {"type": "E", "message": "m", "traceback": ""}
    expired = cascades.ending_of("j", [Planned("rescue", {"error": error}),
                                       Planned("expire", {"reason": "max_attempts"})])
    assert expired == Ending("j", False, None, error)
    deleted = cascades.ending_of("j", [Planned("delete", {"reason": "handler"})])
    assert deleted == Ending("j", False, None, cascades.ended_by("delete", "handler"), True)
    assert deleted.error == {"type": "Deleted", "message": "the job was deleted: handler",
                             "traceback": ""}


@st.composite
def trees(draw: st.DrawFn) -> tuple[Flow, str]:
    """A random flow (each node a state and an edge policy) and one of its leaves."""
    flow = Flow().job("n0")
    ids = ["n0"]
    for i in range(1, draw(st.integers(1, 14))):
        parent = draw(st.sampled_from(ids))
        if flow.states[parent] not in ("pending", "waiting"):
            continue
        state = draw(st.sampled_from(["pending", "running", "succeeded"]))
        policy = draw(st.sampled_from(list(cascades.ON_FAILURE)))
        flow.job(f"n{i}", state if state != "succeeded" else "pending", parent, policy)
        ids.append(f"n{i}")
        if state != "pending":
            flow.states[f"n{i}"] = state
        if state == "succeeded":
            flow.edge_state[f"n{i}"] = "succeeded"
    flow.keeps = {i for i in ids if draw(st.booleans()) and draw(st.booleans())}
    leaves = [i for i in ids if i in flow.parent_of
              and flow.states[i] in ("pending", "running")
              and not any(p == i for p in flow.parent_of.values())]
    return flow, draw(st.sampled_from(leaves)) if leaves else "n0"


@given(trees(), st.booleans())
def test_a_cascade_settles_each_edge_once_and_ends_each_job_once(tree, succeeded):
    flow, leaf = tree
    live_before = {j for j, s in flow.states.items() if s in ("pending", "waiting", "running")}
    events = end(flow, leaf, "succeeded" if succeeded else "failed",
                 Ending(leaf, succeeded, error={"message": "x"}))
    settled = [e.data["child"] for e in events if e.kind == "child"]
    assert len(settled) == len(set(settled))
    ended = [e.job_id for e in events if e.kind in ("fail", "cancel")]
    assert len(ended) == len(set(ended))
    assert set(ended) <= live_before
    # Running jobs are never cancelled by a failure; a cancel always names its parent.
    assert all(e.running is False for e in events if e.kind == "cancel")
    assert all(flow.parent_of[e.job_id] == e.data["parent"]
               for e in events if e.kind == "cancel")
    # A parent is made ready only when none of its edges is open or failed.
    for event in events:
        if event.kind == "ready":
            assert flow.unsettled(event.job_id) == 0


def interleaved(flow: Flow, ending: Ending) -> list[FlowEvent]:
    """The cascade as the SQLite engine wrote it before the decision moved out: each
    read made after the events before it were appended (and folded)."""
    events: list[FlowEvent] = []

    def append(event: FlowEvent) -> None:
        events.append(event)
        flow.apply([event])

    def settle(ending: Ending) -> None:
        edge = flow.open_edge(ending.job_id)
        if edge is None and ending.removed:
            edge = flow.failed_edge(ending.job_id)
        if edge is None:
            return
        outcome = ("succeeded" if ending.succeeded else "removed" if ending.removed
                   else cascades.ON_FAILURE[edge.on_failure])
        data = {"child": ending.job_id, "outcome": outcome}
        if ending.succeeded:
            data["result"] = ending.result
        else:
            data["error"] = ending.error
        append(FlowEvent("child", edge.parent, edge.queue, edge.name, data))
        if outcome == "failed" and edge.on_failure == "fail_parent":
            message = (ending.error or {}).get("message", "")
            failure = {"type": "ChildFailed", "traceback": "", "message":
                       f"child {ending.job_id} failed for good: {message}".rstrip(": ")}
            append(FlowEvent("fail", edge.parent, edge.queue, edge.name, {
                "reason": "child_failed", "child": ending.job_id, "error": failure}))
            if not flow.keeps_children(edge.parent):
                cancel_unstarted(edge.parent)
            settle(Ending(edge.parent, False, None, failure))
        elif flow.unsettled(edge.parent) == 0:
            append(FlowEvent("ready", edge.parent, edge.queue, edge.name,
                             {"run_at": max(edge.run_at, NOW)}))

    def cancel_unstarted(parent: str) -> None:
        for child in flow.live_children(parent):
            if child.state == "running":
                continue
            append(FlowEvent("cancel", child.id, child.queue, child.name,
                             {"reason": "parent_failed", "parent": parent}))
            cancel_unstarted(child.id)

    settle(ending)
    return events


@given(trees(), st.booleans(), st.booleans())
def test_deciding_before_appending_gives_what_interleaved_reads_gave(tree, succeeded,
                                                                     removed):
    flow, leaf = tree
    flow.states[leaf] = "succeeded" if succeeded else "failed"
    ending = Ending(leaf, succeeded, 7, None if succeeded else {"message": "x"},
                    removed and not succeeded)
    before = copy.deepcopy(flow)
    assert cascades.settle(ending, flow, NOW) == interleaved(before, ending)
