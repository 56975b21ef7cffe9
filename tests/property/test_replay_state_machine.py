"""For any sequence of operations (enqueues, flows, claims, every outcome, heartbeats,
cancels, deletes, retries, pauses, lease expiries, abandoned workers), replaying the
events gives exactly the stored projection, a model of each job and of each flow's edges
agrees with it, and the invariants of DESIGN.md hold. Refused operations leave the
ledger exactly as it was."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from evq import rescuing
from evq.errors import EvqError, LeaseLost
from evq.ledger import records
from evq.ledger.sqlite import chain, connection, ops, replay, rescues, trees
from evq.ledger.sqlite.tx import Tx
from evq.outcomes import Planned, RetryPolicy, after_failure
from evq.retry import Fixed

QUEUES = ["a", "b"]
NAMES = ["x", "y"]
WORKERS = ["w1", "w2", "w3"]
TERMINAL = {"success", "expire", "fail", "cancel"}
ON_FAILURE = ["wait", "fail_parent", "ignore", "remove"]
FAILED_EDGE = {"wait": "failed", "fail_parent": "failed", "ignore": "ignored",
               "remove": "removed"}
LIVE = ("pending", "waiting", "running")
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
payloads = st.recursive(json_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.path = self.dir / "ledger.db"
        self.conn = connection.connect(self.path)
        connection.migrate(self.conn)
        self.now = 1_000.0
        self.count = 0
        # the model: job id -> dict(state, errors, max_attempts, group, queue, name)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.held: dict[str, records.Attempt] = {}  # job id -> the attempt a worker holds
        self.stale: list[records.Attempt] = []  # attempts whose holder lost them
        self.paused: set[str] = set()
        # flows: parent -> child -> {"on": on_failure, "state": edge state}
        self.edges: dict[str, dict[str, dict[str, str]]] = {}
        self.parent_of: dict[str, str] = {}
        self.keeps_children: set[str] = set()  # parents enqueued with keep_children

    def teardown(self) -> None:
        if self.conn.execute("SELECT count(*) FROM evq_events").fetchone()[0]:
            # Row triggers: with no event there is nothing to refuse.
            with pytest.raises(sqlite3.IntegrityError):
                self.conn.execute("UPDATE evq_events SET kind = 'x'")
            with pytest.raises(sqlite3.IntegrityError):
                self.conn.execute("DELETE FROM evq_events")
        self.conn.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- running one transaction -------------------------------------------------------
    def snapshot(self) -> tuple[Any, ...]:
        return (self.conn.execute("SELECT max(position) FROM evq_events").fetchone(),
                self.conn.execute("SELECT * FROM evq_jobs ORDER BY id").fetchall(),
                self.conn.execute("SELECT * FROM evq_queues ORDER BY name").fetchall())

    def write(self, op: Any) -> Any:
        before = self.snapshot()
        self.conn.execute("BEGIN IMMEDIATE")
        tx = Tx(self.conn, self.now)
        try:
            result = op(tx)
        except EvqError:
            self.conn.execute("ROLLBACK")
            assert self.snapshot() == before, "a refused operation left a trace"
            raise
        tx.seal()
        self.conn.execute("COMMIT")
        return result

    # --- operations --------------------------------------------------------------------
    @rule(count=st.integers(1, 3), payload=payloads, delay=st.sampled_from([0, 0, 5, 50]),
          priority=st.integers(-2, 2), attempts=st.sampled_from([None, 1, 2, 3]),
          queue=st.sampled_from(QUEUES), name=st.sampled_from(NAMES),
          key=st.sampled_from([None, None, "k1", "k2"]),
          group=st.sampled_from([None, None, "g1", "g2"]))
    def enqueue(self, count: int, payload: Any, delay: float, priority: int,
                attempts: int | None, queue: str, name: str, key: str | None,
                group: str | None) -> None:
        new = []
        for _ in range(count):
            self.count += 1
            new.append(records.NewJob(f"{self.count:06d}", queue, name, payload, self.now + delay,
                                  priority, attempts, key=key, group=group))
        ids = self.write(lambda tx: ops.enqueue(tx, new))
        for job, job_id in zip(new, ids, strict=True):
            if job_id == job.id:
                self.jobs[job_id] = {"state": "pending", "errors": 0, "attempt": 0,
                                     "max": attempts, "group": group, "queue": queue,
                                     "key": key, "hook": None}
            else:  # the key matched a live job: that one is the answer
                assert key is not None and self.jobs[job_id]["key"] == key
                assert self.jobs[job_id]["state"] in LIVE

    @rule(worker=st.sampled_from(WORKERS), limit=st.integers(1, 4),
          lease=st.sampled_from([10.0, 30.0]),
          run_later=st.sampled_from([frozenset(), frozenset({"y"})]))
    def claim(self, worker: str, limit: int, lease: float, run_later: frozenset[str]
              ) -> None:
        """run_later: names whose `run` waits for okay_to_run (a dequeue alone)."""
        claimed = self.write(lambda tx: ops.claim(
            tx, QUEUES, json.dumps(NAMES), limit, worker, lambda n: lease, {"b": 2},
            run_later))
        assert len(claimed) <= limit
        for job in claimed:
            model = self.jobs[job.id]
            assert model["state"] == "pending" and job.queue not in self.paused
            model["state"] = "running"
            model["attempt"] += 1
            assert job.attempt == model["attempt"]
            model["lease_until"] = self.now + lease
            self.held[job.id] = records.Attempt(job.id, job.queue, job.name, job.attempt, worker)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), outcome=st.sampled_from(
        ["success", "error", "fail", "requeue", "defer", "delete", "heartbeat", "run"]))
    def report(self, data: st.DataObject, outcome: str) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.held)))
        held = self.held[job_id]
        model = self.jobs[job_id]
        policy = RetryPolicy(model["max"], Fixed(data.draw(st.sampled_from([0.0, 7.0]))),
                             exhausted_hook=data.draw(st.booleans()))
        error = {"type": "E", "message": "boom", "traceback": ""}
        if outcome == "success":
            planned = [Planned("success", {"result": data.draw(payloads)})]
        elif outcome == "error":
            planned = after_failure("error", error, model["errors"], policy)
        elif outcome == "fail":
            planned = after_failure("error", error, model["errors"], policy,
                                    retryable=False)
        elif outcome == "requeue":
            planned = [Planned(outcome, {"reason": "test", "run_at": self.now + 3})]
        elif outcome == "defer":  # okay_to_run said not now: the attempt is given back
            planned = [Planned(outcome, {"reason": "test", "run_at": self.now + 3,
                                         "attempt_before": held.attempt - 1})]
        elif outcome == "run":  # okay_to_run agreed: the handler starts
            self.write(lambda tx: ops.start_run(tx, held))
            return
        elif outcome == "delete":
            planned = [Planned("delete", {"reason": "handler"})]
        else:
            planned = [Planned("heartbeat", {"lease_until": self.now + 30})]
        self.write(lambda tx: ops.report(tx, held, planned))
        if outcome == "heartbeat":
            model["lease_until"] = self.now + 30
            return
        del self.held[job_id]
        if outcome == "success":
            model["state"] = "succeeded"
            self.settle(job_id, True)
        elif outcome in ("error", "fail"):
            model["errors"] += 1
            model["state"] = {"expire": "expired", "fail": "failed"}.get(
                planned[-1].kind, "pending")
            if planned[-1].kind == "expire" and planned[-1].data.get("hook"):
                model["hook"] = "due"
            if model["state"] != "pending":
                self.settle(job_id, False)
        elif outcome == "delete":
            model["state"] = "gone"
            # A deleted parent takes its (settled: it ran) edges with it.
            self.edges.pop(job_id, None)
            self.settle(job_id, False, removed=True)
        else:
            model["state"] = "pending"
            if outcome == "defer":
                model["attempt"] -= 1

    @rule(seconds=st.sampled_from([1.0, 10.0, 31.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def rescue(self) -> None:
        def rescue(tx: Tx) -> int:
            found, _ = rescues.expired_leases(tx)
            return rescues.rescue(tx, [rescuing.rescue_of(
                lease, RetryPolicy(lease.max_attempts, Fixed(2.0))) for lease in found],
                "rescuer")

        self.write(rescue)
        for job_id in [j for j, held in self.held.items()
                       if self.jobs[j]["lease_until"] <= self.now]:
            model = self.jobs[job_id]
            model["errors"] += 1
            retry = model["max"] is None or model["errors"] < model["max"]
            model["state"] = "pending" if retry else "expired"
            self.stale.append(self.held.pop(job_id))
            if not retry:
                self.settle(job_id, False)

    @rule(worker=st.sampled_from(WORKERS), outcome=st.sampled_from(
        ["done", "failed", "renewed", "dies"]))
    def hook_runs(self, worker: str, outcome: str) -> None:
        """A runner takes one hook (due, or whose runner's lease ran out), then ends it,
        renews it, or dies with it."""
        row, next_at = self.write(lambda tx: ops.take_hook(tx, json.dumps(NAMES), worker,
                                                           20.0))
        free = [j for j, m in self.jobs.items() if m["state"] == "expired" and (
            m["hook"] == "due" or (m["hook"] == "running" and m["hook_until"] <= self.now))]
        if row is None:
            assert free == []
            leases = [m["hook_until"] for m in self.jobs.values()
                      if m["state"] == "expired" and m["hook"] == "running"]
            assert next_at == (min(leases) if leases else None)
            return
        assert row[0] in free
        model = self.jobs[row[0]]
        model["hook"], model["hook_until"], model["hook_worker"] = (
            "running", self.now + 20.0, worker)
        if outcome == "dies":
            return
        if outcome == "renewed":
            self.write(lambda tx: ops.renew_hook(tx, row[0], row[1], row[2], row[6], worker,
                                                 30.0))
            model["hook_until"] = self.now + 30.0
            return
        error = {"type": "E", "message": "x", "traceback": ""} if outcome == "failed" else None
        self.write(lambda tx: ops.finish_hook(tx, row[0], row[1], row[2], row[6], worker,
                                              error))
        model["hook"] = outcome

    @precondition(lambda self: any(m["hook"] == "running" for m in self.jobs.values()))
    @rule(data=st.data(), worker=st.sampled_from(WORKERS))
    def hook_runner_reports(self, data: st.DataObject, worker: str) -> None:
        """A runner ends a hook it may no longer hold: refused unless it is the holder."""
        job_id = data.draw(st.sampled_from(sorted(
            j for j, m in self.jobs.items() if m["hook"] == "running")))
        model = self.jobs[job_id]
        row = self.conn.execute("SELECT queue, name, attempt FROM evq_jobs WHERE id = ?",
                                (job_id,)).fetchone()
        finish = lambda tx: ops.finish_hook(tx, job_id, *row, worker, None)  # noqa: E731
        if worker != model["hook_worker"]:
            with pytest.raises(LeaseLost):
                self.write(finish)
            return
        self.write(finish)
        model["hook"] = "done"

    @rule(worker=st.sampled_from(WORKERS))
    def worker_restarts(self, worker: str) -> None:
        released = self.write(lambda tx: ops.release_previous(tx, worker, json.dumps(QUEUES)))
        mine = sorted(j for j, held in self.held.items() if held.worker == worker)
        assert sorted(released) == mine
        for job_id in mine:
            self.jobs[job_id]["state"] = "pending"
            self.stale.append(self.held.pop(job_id))

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        model = self.jobs[job_id]
        self.count += 1
        new_id = f"{self.count:06d}"
        if model["state"] not in ("failed", "expired", "cancelled") or self.edges.get(job_id):
            with pytest.raises(EvqError):
                self.write(lambda tx: ops.retry(tx, job_id, new_id, "test"))
            return
        self.write(lambda tx: ops.retry(tx, job_id, new_id, "test"))
        self.jobs[new_id] = {**model, "state": "pending", "errors": 0, "attempt": 0,
                             "key": None, "hook": None}
        parent = self.parent_of.get(job_id)
        edge = self.edges.get(parent or "", {}).get(job_id)
        if parent and edge and edge["state"] == "failed" \
                and self.jobs[parent]["state"] == "waiting":
            edge["state"] = "replaced"  # the new job takes the failed child's place
            self.edges[parent][new_id] = {"on": edge["on"], "state": "open"}
            self.parent_of[new_id] = parent

    @precondition(lambda self: self.stale)
    @rule(data=st.data())
    def abandoned_worker_reports(self, data: st.DataObject) -> None:
        held = data.draw(st.sampled_from(self.stale))
        with pytest.raises(LeaseLost):
            self.write(lambda tx: ops.report(tx, held, [Planned("success", {"result": 1})]))

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        model = self.jobs[job_id]
        if model["state"] not in LIVE:
            with pytest.raises(EvqError):
                self.write(lambda tx: ops.cancel(tx, job_id, "test"))
            return
        cancelled = self.write(lambda tx: ops.cancel(tx, job_id, "test"))
        expected = self.cancel_in_model(job_id)
        assert [job for job, _ in cancelled] == expected
        self.settle(job_id, False)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def run_now(self, data: st.DataObject) -> None:
        """An operator makes a job due now: a pending one only, whatever its time."""
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        if self.jobs[job_id]["state"] != "pending":
            with pytest.raises(EvqError):
                self.write(lambda tx: ops.run_now(tx, job_id, "test"))
            return
        due = self.write(lambda tx: ops.run_now(tx, job_id, "test"))
        (run_at,) = self.conn.execute("SELECT run_at FROM evq_jobs WHERE id = ?",
                                      (job_id,)).fetchone()
        assert due == run_at <= self.now

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def admin_delete(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        model = self.jobs[job_id]
        if model["state"] in ("running", "gone"):
            with pytest.raises(EvqError):
                self.write(lambda tx: ops.delete(tx, job_id, "admin"))
            return
        cancelled = self.write(lambda tx: ops.delete(tx, job_id, "admin"))
        model["state"] = "gone"
        # A deleted parent takes its live descendants along, whatever its own state.
        expected = [job for child in self.edges.pop(job_id, {})
                    if self.jobs[child]["state"] in LIVE
                    for job in self.cancel_in_model(child)]
        assert sorted(job for job, _ in cancelled) == sorted(expected)
        self.settle(job_id, False, removed=True)

    # --- flows -------------------------------------------------------------------------
    def new_node(self, queue: str, name: str, on_failure: str,
                 children: tuple[records.PlannedNode, ...] = (), key: str | None = None,
                 keep_children: bool = False) -> records.PlannedNode:
        self.count += 1
        job = records.NewJob(f"{self.count:06d}", queue, name, None, self.now, 0, 2, key=key,
                         keep_children=keep_children)
        return records.PlannedNode(job, on_failure, children)

    @rule(data=st.data(), key=st.sampled_from([None, None, "k1"]))
    def enqueue_tree(self, data: st.DataObject, key: str | None) -> None:
        def grow(depth: int, on_failure: str, key: str | None = None) -> records.PlannedNode:
            fanout = data.draw(st.integers(0, 2 if depth < 2 else 0))
            children = tuple(grow(depth + 1, data.draw(st.sampled_from(ON_FAILURE)))
                             for _ in range(fanout))
            return self.new_node(data.draw(st.sampled_from(QUEUES)),
                                 data.draw(st.sampled_from(NAMES)), on_failure, children,
                                 key, keep_children=bool(children) and data.draw(
                                     st.booleans()))
        root = grow(0, "wait", key)
        placed = self.write(lambda tx: trees.enqueue_tree(tx, root))
        if not placed.added:  # the key named a live job: nothing was added
            assert key is not None and self.jobs[placed.id]["key"] == key
            assert self.jobs[placed.id]["state"] in LIVE
            return
        self.add_to_model(root, parent=None)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), on_failure=st.sampled_from(ON_FAILURE))
    def add_child(self, data: st.DataObject, on_failure: str) -> None:
        parent = data.draw(st.sampled_from(sorted(self.jobs)))
        child = self.new_node("a", "x", on_failure)
        if self.jobs[parent]["state"] not in ("pending", "waiting") \
                or self.jobs[parent]["attempt"]:
            with pytest.raises(EvqError):
                self.write(lambda tx: trees.add_children(tx, parent, (child,)))
            return
        self.write(lambda tx: trees.add_children(tx, parent, (child,)))
        self.add_to_model(child, parent)
        self.jobs[parent]["state"] = "waiting"

    def add_to_model(self, node: records.PlannedNode, parent: str | None) -> None:
        job = node.job
        self.jobs[job.id] = {"state": "waiting" if node.children else "pending", "errors": 0,
                             "attempt": 0, "max": job.max_attempts, "group": None,
                             "queue": job.queue, "key": job.key, "hook": None}
        if job.keep_children:
            self.keeps_children.add(job.id)
        if parent is not None:
            self.edges.setdefault(parent, {})[job.id] = {"on": node.on_failure,
                                                        "state": "open"}
            self.parent_of[job.id] = parent
        for child in node.children:
            self.add_to_model(child, job.id)

    def settle(self, job_id: str, succeeded: bool, removed: bool = False) -> None:
        """The model of what a job's end does to its parent: a deleted child is removed
        from its parent's dependencies, even one that had failed."""
        parent = self.parent_of.get(job_id)
        edge = self.edges.get(parent or "", {}).get(job_id)
        settles = ("open", "failed") if removed else ("open",)
        if parent is None or edge is None or edge["state"] not in settles \
                or self.jobs[parent]["state"] != "waiting":
            return
        edge["state"] = ("succeeded" if succeeded else "removed" if removed
                         else FAILED_EDGE[edge["on"]])
        if edge["state"] == "failed" and edge["on"] == "fail_parent":
            self.jobs[parent]["state"] = "failed"
            if parent not in self.keeps_children:
                self.cancel_unstarted(parent)
            self.settle(parent, False)
        elif all(e["state"] not in ("open", "failed") for e in self.edges[parent].values()):
            self.jobs[parent]["state"] = "pending"

    def cancel_unstarted(self, parent: str) -> None:
        """A parent failed because of a child: its descendants that have not started
        (pending or waiting) are cancelled; running ones run on."""
        for child in self.edges.get(parent, {}):
            if self.jobs[child]["state"] in ("pending", "waiting"):
                self.jobs[child]["state"] = "cancelled"
                self.cancel_unstarted(child)

    def cancel_in_model(self, job_id: str) -> list[str]:
        """Cancel a job and its live descendants; the ids, in the order ops cancels."""
        model = self.jobs[job_id]
        model["state"] = "cancelled"
        if job_id in self.held:
            self.stale.append(self.held.pop(job_id))
        done = [job_id]
        for child in self.edges.get(job_id, {}):
            if self.jobs[child]["state"] in LIVE:
                done += self.cancel_in_model(child)
        return done

    @rule(queue=st.sampled_from(QUEUES), paused=st.booleans())
    def pause(self, queue: str, paused: bool) -> None:
        self.write(lambda tx: ops.set_paused(tx, queue, paused, None))
        (self.paused.add if paused else self.paused.discard)(queue)

    # --- invariants --------------------------------------------------------------------
    @invariant()
    def replay_equals_projection_and_the_chain_holds(self) -> None:
        check = replay.check(self.path)
        assert check.ok, (check.only_rebuilt, check.only_stored, check.refusal)
        checked = chain.check(self.conn)
        assert checked.ok, checked.problem

    @invariant()
    def model_agrees_and_nothing_is_lost(self) -> None:
        stored = {row[0]: row[1:] for row in self.conn.execute(
            "SELECT id, state, errors, attempt, hook_state FROM evq_jobs")}
        edges = {(p, c): state for p, c, state in self.conn.execute(
            "SELECT parent_id, child_id, state FROM evq_dependencies")}
        assert edges == {(p, c): e["state"] for p, children in self.edges.items()
                         for c, e in children.items()}
        for job_id, blocked_by in self.conn.execute("SELECT id, blocked_by FROM evq_jobs"):
            failed = sorted(c for c, e in self.edges.get(job_id, {}).items()
                            if e["state"] == "failed")
            assert blocked_by == (failed[0] if failed else None), job_id
        for job_id, model in self.jobs.items():
            if model["state"] == "gone":
                assert job_id not in stored
                kinds = [k for (k,) in self.conn.execute(
                    "SELECT kind FROM evq_events WHERE job_id = ?", (job_id,))]
                assert kinds[-1] == "delete"
            else:
                assert stored.get(job_id) == (model["state"], model["errors"],
                                              model["attempt"], model["hook"]), job_id

    @invariant()
    def ledger_rules_hold(self) -> None:
        events = self.conn.execute(
            "SELECT position, kind, job_id, attempt FROM evq_events ORDER BY rowid").fetchall()
        positions = [e[0] for e in events]
        assert positions == sorted(set(positions))
        held: set[tuple[str, int]] = set()  # attempts claimed, less those given back
        for _, kind, job_id, attempt in events:
            if kind == "dequeue":
                assert (job_id, attempt) not in held, "an attempt was claimed twice"
                held.add((job_id, attempt))
            elif kind == "defer" and (job_id, attempt) in held:
                held.discard((job_id, attempt))  # a defer gives its attempt back
        per_job: dict[str, list[str]] = {}
        for _, kind, job_id, _ in events:
            if job_id and kind in TERMINAL:
                per_job.setdefault(job_id, []).append(kind)
        for kinds in per_job.values():
            assert len(kinds) == 1, kinds
        for job_id, state in self.conn.execute("SELECT id, state FROM evq_jobs"):
            ended = state in ("succeeded", "failed", "expired", "cancelled")
            assert ended == (job_id in per_job)
        groups = self.conn.execute(
            "SELECT job_group, count(*) FROM evq_jobs WHERE state = 'running' "
            "AND job_group IS NOT NULL GROUP BY job_group HAVING count(*) > 1").fetchall()
        assert groups == [], "two jobs of one group ran at once"
        keys = self.conn.execute(
            "SELECT idempotency_key, count(*) FROM evq_jobs WHERE idempotency_key IS NOT NULL "
            "AND state IN ('pending', 'running', 'waiting') GROUP BY 1 HAVING count(*) > 1"
        ).fetchall()
        assert keys == []
        # A parent waits exactly while an edge of it is open or failed.
        waiting = {row[0] for row in self.conn.execute(
            "SELECT id FROM evq_jobs WHERE state = 'waiting'")}
        blocked = {row[0] for row in self.conn.execute(
            "SELECT DISTINCT d.parent_id FROM evq_dependencies AS d JOIN evq_jobs AS p "
            "ON p.id = d.parent_id WHERE d.state IN ('open', 'failed') "
            "AND p.state IN ('pending', 'waiting')")}
        assert waiting == blocked


# EVQ_HYPOTHESIS_EXAMPLES=400 for a long search; CI keeps the default short.
LedgerMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("EVQ_HYPOTHESIS_EXAMPLES", "40")),
    stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_ledger_state_machine = LedgerMachine.TestCase
