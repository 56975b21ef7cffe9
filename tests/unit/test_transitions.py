"""The rules of cancel, delete, retry, adding children and idempotency are pure: tested
here on plain values, with no database."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from evq import transitions
from evq.errors import FlowError, JobStateConflict, UnknownJob

STATES = ["pending", "waiting", "running", "succeeded", "failed", "expired", "cancelled"]


@attrs.define
class Job:
    id: str
    key: str | None = None


def test_which_states_may_be_cancelled_deleted_and_retried():
    assert sorted(transitions.CANCELLABLE) == ["pending", "running", "waiting"]
    assert [s for s in STATES if not transitions.may_delete(s, by_holder=False)] == ["running"]
    assert all(transitions.may_delete(s, by_holder=True) for s in STATES)
    assert sorted(transitions.RETRYABLE) == ["cancelled", "expired", "failed"]


def test_a_cancel_of_a_running_job_names_its_worker():
    assert transitions.cancel_data("no", "running", "w1") == {"reason": "no",
                                                              "running_on": "w1"}
    assert transitions.cancel_data(None, "pending", None) == {"reason": None}


@pytest.mark.parametrize("state", STATES)
def test_only_a_job_that_ended_badly_is_retried(state):
    if state in ("failed", "expired", "cancelled"):
        transitions.check_retry("j", state, children=0)
    else:
        with pytest.raises(JobStateConflict, match=f"job j is {state}"):
            transitions.check_retry("j", state, children=0)


def test_retry_refuses_an_unknown_job_and_a_parent():
    with pytest.raises(UnknownJob, match="deleted jobs cannot be retried"):
        transitions.check_retry("gone", None, children=0)
    with pytest.raises(JobStateConflict, match="waited for children"):
        transitions.check_retry("p", "failed", children=2)


def test_children_are_added_only_to_a_job_that_has_not_started():
    transitions.check_add_children("p", "pending", 0)
    transitions.check_add_children("p", "waiting", 0)
    with pytest.raises(JobStateConflict, match=r"pending after 1 attempt\(s\)"):
        transitions.check_add_children("p", "pending", 1)  # deferred once: it started
    with pytest.raises(JobStateConflict, match="is running"):
        transitions.check_add_children("p", "running", 1)
    with pytest.raises(UnknownJob):
        transitions.check_add_children("p", None, 0)


def test_a_key_matching_a_live_job_gives_that_job_and_is_asked_once():
    asked: list[str] = []

    def live(key: str) -> str | None:
        asked.append(key)
        return {"k-live": "old"}.get(key)

    jobs = [Job("a", "k-live"), Job("b"), Job("c", "k-new"), Job("d", "k-new"),
            Job("e", "k-live")]
    ids, fresh = transitions.keyed(jobs, live)
    assert ids == ["old", "b", "c", "c", "old"]
    assert fresh == [jobs[1], jobs[2]]
    assert asked == ["k-live", "k-new", "k-live"]


@given(st.lists(st.tuples(st.integers(0, 50), st.none() | st.sampled_from("abcd")),
                unique_by=lambda t: t[0], max_size=20),
       st.dictionaries(st.sampled_from("abcd"), st.just("live")))
def test_keyed_adds_each_key_once_and_keeps_order(items, live):
    jobs = [Job(f"j{n}", key) for n, key in items]
    ids, fresh = transitions.keyed(jobs, live.get)
    assert len(ids) == len(jobs)
    keys = [job.key for job in fresh if job.key is not None]
    assert len(keys) == len(set(keys)) and not set(keys) & set(live)
    assert fresh == [job for job in jobs if job in fresh]  # in order
    for job, given_id in zip(jobs, ids, strict=True):
        assert given_id == job.id or job.key is not None


def test_a_flow_node_stands_in_for_a_live_job_with_its_key():
    live = {"k": "old"}.get
    assert transitions.stand_in("k", {}, live, ancestors=set()) == "old"
    assert transitions.stand_in("other", {}, live, ancestors=set()) is None
    with pytest.raises(FlowError, match="two jobs of one flow"):
        transitions.stand_in("k", {"k": "new1"}, live, ancestors=set())
    with pytest.raises(FlowError, match="cycle"):
        transitions.stand_in("k", {}, live, ancestors={"old", "parent"})
