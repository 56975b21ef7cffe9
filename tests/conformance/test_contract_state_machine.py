"""Random histories through the interface alone: enqueues (keys, groups, delays), claims
(queue limits, paused queues, okay_to_run), every outcome, heartbeats, lease expiry and
rescue, cancel, delete, retry, reports from workers that lost their attempt, and crashes
(the handle closed, with a write asked for and refused, then reopened). After every step
the invariants of DESIGN.md hold: replay equals projection (the engine's replay check),
the projection agrees with a model of every job, nothing acknowledged is lost, positions
only grow, an attempt is claimed once, a job ends once and succeeds at most once, one job
of a group runs, one live job holds a key; and every commit was handed on, whole and in
order."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from ledger_kit import ERROR, LIVE, TERMINAL_KINDS, EngineKit, request

import evq
from evq.events import Event
from evq.ledger import Ledger, records
from evq.outcomes import Planned, RetryPolicy, after_failure
from evq.rescuing import rescue_of
from evq.retry import Fixed

T = TypeVar("T")
QUEUES = ("a", "b")
NAMES = ("x", "y")
WORKERS = ("w1", "w2", "w3")
QUEUE_LIMITS = {"b": 2}
ENDED = {"succeeded", "failed", "expired", "cancelled"}
SETTINGS = settings(
    # EVQ_HYPOTHESIS_EXAMPLES=400 for a long search; the default stays short.
    max_examples=int(os.environ.get("EVQ_HYPOTHESIS_EXAMPLES", "40")),
    stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
payloads = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6)


@attrs.define
class Model:
    """What the ledger must say of one job."""

    queue: str
    name: str
    priority: int
    run_at: float
    max: int | None
    key: str | None
    group: str | None
    order: int  # enqueue order, the last tie-breaker of claims
    state: str = "pending"
    attempt: int = 0
    errors: int = 0
    lease_until: float | None = None


class LedgerMachine(RuleBasedStateMachine):
    kit: EngineKit  # set per engine by the test below

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.place = self.kit.place(self.dir)
        self.loop = asyncio.new_event_loop()
        self.clock = evq.FakeClock(1_800_000_000.0)
        self.committed: list[int] = []  # positions handed to on_commit, in order
        self.ledger = self.open()
        self.count = 0
        self.jobs: dict[str, Model] = {}
        self.gone: set[str] = set()  # deleted: out of the projection, events kept
        self.held: dict[str, records.Attempt] = {}
        self.stale: list[records.Attempt] = []  # attempts whose holder lost them
        self.paused: set[str] = set()
        self.seen: list[Event] = []  # every event read so far
        self.replayed = 0  # the head when replay was last checked

    def teardown(self) -> None:
        try:
            self.run(self.ledger.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def run(self, step: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(step)

    def open(self) -> Ledger:
        handle = self.kit.handle(self.place)
        self.run(handle.open(self.clock, self.on_commit))
        return handle

    def on_commit(self, batch: Any) -> None:
        self.committed.extend(event.position for event in batch)

    def refused(self, step: Coroutine[Any, Any, Any], error: type[Exception]) -> None:
        """The step raises `error` and changes nothing."""
        before = self.run(self.ledger.head()), self.run(self.ledger.jobs())
        with pytest.raises(error):
            self.run(step)
        assert (self.run(self.ledger.head()), self.run(self.ledger.jobs())) == before

    def new_id(self, prefix: str = "j") -> str:
        self.count += 1
        return f"{prefix}{self.count:05d}"

    def add(self, job: records.NewJob) -> None:
        self.jobs[job.id] = Model(job.queue, job.name, job.priority, job.run_at,
                                  job.max_attempts, job.key, job.group, self.count)

    def live_with_key(self, key: str) -> str | None:
        return next((i for i, m in self.jobs.items() if m.key == key and m.state in LIVE),
                    None)

    def lose(self, job_id: str) -> None:
        self.stale.append(self.held.pop(job_id))
        self.jobs[job_id].lease_until = None

    # --- writes ---------------------------------------------------------------------------
    @initialize(queues=st.lists(st.sampled_from(QUEUES), min_size=4, max_size=4))
    def some_jobs(self, queues: list[str]) -> None:
        jobs = [records.NewJob(self.new_id(), queue, "x", None, self.clock.now(), 0, 2)
                for queue in queues]
        assert self.run(self.ledger.enqueue(jobs)) == [job.id for job in jobs]
        for job in jobs:
            self.add(job)

    @rule(count=st.integers(1, 3), payload=payloads, delay=st.sampled_from([0, 0, 0, 5, 50]),
          priority=st.integers(-1, 1), attempts=st.sampled_from([None, 1, 2, 3]),
          queue=st.sampled_from(QUEUES), name=st.sampled_from(NAMES),
          key=st.sampled_from([None, None, "k1", "k2"]),
          group=st.sampled_from([None, None, "g1", "g2"]))
    def enqueue(self, count: int, payload: Any, delay: float, priority: int,
                attempts: int | None, queue: str, name: str, key: str | None,
                group: str | None) -> None:
        new = [records.NewJob(self.new_id(), queue, name, payload, self.clock.now() + delay,
                              priority, attempts, key=key, group=group)
               for _ in range(count)]
        ids = self.run(self.ledger.enqueue(new))
        for job, got in zip(new, ids, strict=True):
            expected = self.live_with_key(key) if key is not None else None
            assert got == (expected or job.id)
            if got == job.id:
                self.add(job)

    def eligible(self) -> list[str]:
        """Due jobs a claim may take now, best first."""
        running_groups = {m.group for m in self.jobs.values()
                          if m.state == "running" and m.group is not None}
        due = [i for i, m in self.jobs.items()
               if m.state == "pending" and m.run_at <= self.clock.now()
               and m.queue not in self.paused and m.group not in running_groups
               and self.room(m.queue) > 0]
        return sorted(due, key=lambda i: (-self.jobs[i].priority, self.jobs[i].run_at,
                                          self.jobs[i].order))

    def room(self, queue: str) -> float:
        if queue not in QUEUE_LIMITS:
            return float("inf")
        running = sum(1 for m in self.jobs.values() if m.state == "running" and
                      m.queue == queue)
        return QUEUE_LIMITS[queue] - running

    @rule(worker=st.sampled_from(WORKERS), limit=st.integers(1, 4),
          lease=st.sampled_from([10.0, 30.0]), later=st.booleans())
    def claim(self, worker: str, limit: int, lease: float, later: bool) -> None:
        eligible = self.eligible()
        result = self.run(self.ledger.claim(request(
            worker, QUEUES, NAMES, limit, lease, QUEUE_LIMITS, ["y"] if later else [])))
        taken = [job.id for job in result.claimed]
        assert len(taken) <= limit and set(taken) <= set(eligible), (taken, eligible)
        assert not eligible or eligible[0] in taken, "the best due job was passed over"
        groups = [self.jobs[i].group for i in taken if self.jobs[i].group is not None]
        assert len(groups) == len(set(groups)), "two jobs of one group claimed at once"
        for job in result.claimed:
            model = self.jobs[job.id]
            model.state, model.attempt = "running", model.attempt + 1
            model.lease_until = self.clock.now() + lease
            assert (job.attempt, job.errors, job.lease_until) == (
                model.attempt, model.errors, model.lease_until)
            self.held[job.id] = records.Attempt(job.id, job.queue, job.name, job.attempt,
                                                worker)
        for queue in QUEUE_LIMITS:
            assert self.room(queue) >= 0, f"queue {queue} ran over its limit"

    @precondition(lambda self: self.held)
    @rule(data=st.data(), outcome=st.sampled_from(
        ["success", "error", "fail", "requeue", "defer", "run", "heartbeat"]))
    def report(self, data: st.DataObject, outcome: str) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.held)))
        held, model = self.held[job_id], self.jobs[job_id]
        now = self.clock.now()
        if outcome == "run":  # okay_to_run agreed (or a second run: allowed)
            self.run(self.ledger.start_run(held))
            return
        if outcome == "heartbeat":
            lease = data.draw(st.sampled_from([10.0, 30.0]))
            assert self.run(self.ledger.heartbeat([records.Beat(held, lease)])) == [
                now + lease]
            model.lease_until = now + lease
            return
        backoff = data.draw(st.sampled_from([0.0, 7.0]))
        policy = RetryPolicy(model.max, Fixed(backoff))
        steps = {
            "success": lambda: [Planned("success", {"result": data.draw(payloads)})],
            "error": lambda: after_failure("error", dict(ERROR), model.errors, policy),
            "fail": lambda: after_failure("error", dict(ERROR), model.errors, policy,
                                          retryable=False),
            "requeue": lambda: [Planned("requeue", {"reason": "test"}, due_in=3.0)],
            "defer": lambda: [Planned("defer", {"reason": "test",
                                                "attempt_before": held.attempt - 1},
                                      due_in=3.0)],
        }[outcome]()
        self.run(self.ledger.report(held, steps))
        self.lose(job_id)  # reported: any further report of this attempt is refused
        if outcome == "success":
            model.state = "succeeded"
        elif outcome in ("error", "fail"):
            model.errors += 1
            model.state = {"expire": "expired", "fail": "failed"}.get(steps[-1].kind,
                                                                      "pending")
            model.run_at = now + backoff
        else:
            model.state, model.run_at = "pending", now + 3.0
            if outcome == "defer":
                model.attempt -= 1

    @precondition(lambda self: self.stale)
    @rule(data=st.data(), outcome=st.sampled_from(["success", "error", "run", "heartbeat"]))
    def stale_worker_reports(self, data: st.DataObject, outcome: str) -> None:
        held = data.draw(st.sampled_from(self.stale))
        if self.held.get(held.job_id) == held:  # claimed again by the same worker: not stale
            return
        if outcome == "heartbeat":
            assert self.run(self.ledger.heartbeat([records.Beat(held, 30.0)])) == [None]
        elif outcome == "run":
            self.refused(self.ledger.start_run(held), evq.LeaseLost)
        else:
            steps = ([Planned("success", {"result": 1})] if outcome == "success" else
                     after_failure("error", dict(ERROR), 0, RetryPolicy(None, Fixed(0))))
            self.refused(self.ledger.report(held, steps), evq.LeaseLost)

    @rule(seconds=st.sampled_from([1.0, 10.0, 31.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.held)
    @rule()
    def rescue(self) -> None:
        now = self.clock.now()
        found, _ = self.run(self.ledger.expired_leases())
        expected = {i for i in self.held if (self.jobs[i].lease_until or now + 1) <= now}
        assert {lease.job_id for lease in found} == expected
        decided = [rescue_of(lease, RetryPolicy(lease.max_attempts, Fixed(2.0)))
                   for lease in found]
        assert self.run(self.ledger.rescue(decided, "rescuer")) == len(expected)
        for job_id in expected:
            model = self.jobs[job_id]
            model.errors += 1
            retry = model.max is None or model.errors < model.max
            model.state = "pending" if retry else "expired"
            model.run_at = now + 2.0
            self.lose(job_id)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), action=st.sampled_from(["cancel", "delete", "retry"]))
    def operator(self, data: st.DataObject, action: str) -> None:
        """An operator cancels, deletes or retries a job, in any state."""
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        getattr(self, action)(job_id, self.jobs[job_id])

    def cancel(self, job_id: str, model: Model) -> None:
        if job_id in self.gone:
            self.refused(self.ledger.cancel(job_id, "test"), evq.UnknownJob)
        elif model.state not in LIVE:
            self.refused(self.ledger.cancel(job_id, "test"), evq.JobStateConflict)
        else:
            stopped = self.run(self.ledger.cancel(job_id, "test"))
            assert stopped == [records.Stopped(job_id, model.state == "running")]
            if model.state == "running":
                self.lose(job_id)
            model.state = "cancelled"

    def delete(self, job_id: str, model: Model) -> None:
        if job_id in self.gone:
            self.refused(self.ledger.delete(job_id, "test"), evq.UnknownJob)
        elif model.state == "running":
            self.refused(self.ledger.delete(job_id, "test"), evq.JobStateConflict)
        else:
            assert self.run(self.ledger.delete(job_id, "test")) == []
            assert self.run(self.ledger.history(job_id))[-1].kind == "delete"
            self.gone.add(job_id)
            model.state, model.key = "gone", None

    def retry(self, job_id: str, model: Model) -> None:
        new_id = self.new_id("r")
        if job_id in self.gone:
            self.refused(self.ledger.retry(job_id, new_id, None), evq.UnknownJob)
        elif model.state not in ("failed", "expired", "cancelled"):
            self.refused(self.ledger.retry(job_id, new_id, None), evq.JobStateConflict)
        else:
            assert self.run(self.ledger.retry(job_id, new_id, None)) == new_id
            self.jobs[new_id] = Model(model.queue, model.name, model.priority,
                                      self.clock.now(), model.max, None, model.group,
                                      self.count)

    @rule(queue=st.sampled_from(QUEUES), paused=st.booleans())
    def pause(self, queue: str, paused: bool) -> None:
        self.run(self.ledger.set_paused(queue, paused, None))
        (self.paused.add if paused else self.paused.discard)(queue)

    @precondition(lambda self: self.held)
    @rule(in_flight=st.booleans())
    def crash(self, in_flight: bool) -> None:
        """The handle closes (with an enqueue asked for but not yet handed over, which is
        refused and must leave no trace), then a new one opens on the same ledger."""
        job = records.NewJob(self.new_id(), "a", "x", None, self.clock.now(), 0, None)

        async def close() -> None:
            flight = asyncio.ensure_future(self.ledger.enqueue([job])) if in_flight else None
            await self.ledger.close()  # runs before the enqueue's task starts
            if flight is not None:
                with pytest.raises(evq.ContextClosed):
                    await flight

        self.run(close())
        self.ledger = self.open()
        assert self.run(self.ledger.get_job(job.id)) is None
        assert self.run(self.ledger.history(job.id)) == []

    # --- invariants -----------------------------------------------------------------------
    @invariant()
    def the_invariants_hold(self) -> None:
        stored = {job.id: job for job in self.run(self.ledger.jobs())}
        self.projection_agrees_with_the_model(stored)
        self.groups_and_keys_are_exclusive(list(stored.values()))
        self.log_keeps_the_rules()
        if self.seen and self.seen[-1].position != self.replayed:  # something was written
            check = self.ledger.check_replay()
            assert check.ok, (check.only_rebuilt, check.only_stored, check.refusal)
            assert check.events == len(self.seen)
            self.replayed = self.seen[-1].position

    def projection_agrees_with_the_model(self, stored: dict[str, evq.JobRecord]) -> None:
        """The stored state is the model's, and nothing acknowledged is lost: every job
        is there, or was deleted."""
        assert set(stored) == set(self.jobs) - self.gone
        for job_id, job in stored.items():
            model = self.jobs[job_id]
            assert (str(job.state), job.attempt, job.errors) == (
                model.state, model.attempt, model.errors), job_id
            lease = None if job.lease_until is None else job.lease_until.timestamp()
            assert lease == (model.lease_until if model.state == "running" else None)
            if model.state == "pending":
                assert job.run_at.timestamp() == model.run_at, job_id

    def groups_and_keys_are_exclusive(self, jobs: list[evq.JobRecord]) -> None:
        running = [j.group for j in jobs if j.state == "running" and j.group is not None]
        assert len(running) == len(set(running)), "two jobs of one group run at once"
        keys = [j.idempotency_key for j in jobs
                if str(j.state) in LIVE and j.idempotency_key is not None]
        assert len(keys) == len(set(keys)), "two live jobs hold one key"

    def log_keeps_the_rules(self) -> None:
        """Positions only grow; every commit is handed on; an attempt is claimed once; a
        job ends once (so succeeds at most once), and has ended exactly when its state
        says so."""
        after = self.seen[-1].position if self.seen else 0
        self.seen.extend(self.run(self.ledger.events(after, 10_000, True)))
        positions = [e.position for e in self.seen]
        assert all(a < b for a, b in itertools.pairwise(positions))
        assert positions == self.committed, "every commit is handed on, whole, in order"
        assert self.run(self.ledger.head()) == (positions[-1] if positions else 0)
        claimed: set[tuple[str | None, int | None]] = set()
        ends: dict[str, list[str]] = {}
        for event in self.seen:
            if event.kind == "dequeue":
                assert (event.job_id, event.attempt) not in claimed, "an attempt claimed twice"
                claimed.add((event.job_id, event.attempt))
            elif event.kind == "defer":
                claimed.discard((event.job_id, event.attempt))  # the attempt is given back
            elif event.kind in TERMINAL_KINDS and event.job_id is not None:
                ends.setdefault(event.job_id, []).append(event.kind)
        assert all(len(kinds) == 1 for kinds in ends.values()), ends
        for job_id, model in self.jobs.items():
            if job_id not in self.gone:
                assert (model.state in ENDED) == (job_id in ends), job_id


def test_random_histories_keep_the_invariants(engine: EngineKit) -> None:
    machine = type("LedgerMachine", (LedgerMachine,), {"kit": engine})
    run_state_machine_as_test(machine, settings=SETTINGS)
