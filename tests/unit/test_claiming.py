"""Claim rules are pure: a queue's room under its concurrency limit, one job per group,
and the order across queues, over typed candidates with no database."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from evq import claiming
from evq.claiming import Candidate


def job(n: int, queue: str = "q", group: str | None = None, priority: int = 0,
        run_at: float = 0.0) -> Candidate:
    return Candidate(f"j{n}", queue, "job", 0, 0, None, priority, run_at, 0.0, "{}", n,
                     group, 0)


candidates = st.lists(
    st.builds(lambda n, queue, group, priority, run_at: job(n, queue, group, priority, run_at),
              st.integers(0, 10_000), st.sampled_from(["a", "b", "c"]),
              st.none() | st.sampled_from(["g1", "g2", "g3"]), st.integers(-2, 2),
              st.sampled_from([0.0, 1.0, 2.0])),
    max_size=30, unique_by=lambda c: c.position)


def claim_order(jobs: list[Candidate]) -> list[Candidate]:
    return sorted(jobs, key=lambda c: (-c.priority, c.run_at, c.position))


def test_room_is_the_limit_minus_what_runs_within_the_claims_limit():
    assert claiming.room(10, None, 99) == 10
    assert claiming.room(10, 4, 1) == 3
    assert claiming.room(2, 4, 1) == 2
    assert claiming.room(10, 4, 4) == 0
    assert claiming.room(10, 4, 6) < 0  # a limit lowered below what runs: none taken


def test_one_group_at_the_head_makes_the_engine_look_further():
    found = [job(1, group="g"), job(2, group="g"), job(3)]
    kept = claiming.one_per_group(found)
    assert [c.id for c in kept] == ["j1", "j3"]
    assert claiming.look_further(len(found), len(kept), room=3)
    assert not claiming.look_further(len(found), len(kept), room=4)  # the queue is drained
    assert not claiming.look_further(3, 3, room=3)  # nothing left out


@given(candidates)
def test_one_per_group_keeps_order_and_never_two_of_a_group(jobs):
    kept = claiming.one_per_group(jobs)
    groups = [c.group for c in kept if c.group is not None]
    assert len(groups) == len(set(groups))
    positions = iter(jobs)
    assert all(any(c is other for other in positions) for c in kept)  # a subsequence
    # Only a job of a group already taken is left out.
    assert {c.id for c in jobs if c.group is None} <= {c.id for c in kept}
    assert {c.group for c in jobs} == {c.group for c in kept}


@given(st.lists(candidates, max_size=4), st.integers(1, 20))
def test_merge_takes_the_oldest_priority_first_one_per_group_within_the_limit(chosen, limit):
    # Each queue's choice is as the engine makes it: in the claim's order, one per group.
    chosen = [claiming.one_per_group(claim_order(jobs)) for jobs in chosen]
    taken = claiming.merge(chosen, limit)
    assert len(taken) <= limit
    assert taken == claim_order(taken)
    groups = [c.group for c in taken if c.group is not None]
    assert len(groups) == len(set(groups))
    # Nothing better was passed over, unless its group was taken by a better job.
    everything = claim_order([c for jobs in chosen for c in jobs])
    assert taken == claiming.one_per_group(everything)[:limit]


def test_one_queue_is_taken_as_chosen():
    chosen = [job(1), job(2, group="g"), job(3)]
    assert claiming.merge([chosen], 5) is chosen
    assert claiming.merge([chosen], 2) == chosen[:2]
    assert claiming.merge([], 5) == []
