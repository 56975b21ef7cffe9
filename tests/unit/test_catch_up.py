"""A schedule's turn at an orchestrator's round is pure: which due time fires, how many
were missed, when it is next due, and which schedules a round looks at."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from evq import schedules
from evq.schedules import Cron, Every, Firing

MINUTE = 60.0
T = 1_767_225_600.0  # 2026-01-01 00:00 UTC


def test_a_new_interval_schedule_of_this_process_fires_at_once():
    every = Every(MINUTE)
    assert schedules.firing(every, None, local=True, now=T) == Firing(False, T, T + MINUTE, 0)


def test_a_schedule_is_not_fired_before_it_is_due():
    every = Every(MINUTE)
    assert schedules.firing(every, (every.spec, T + 1), local=True, now=T) is None


def test_after_downtime_a_schedule_fires_once_for_the_first_missed_time():
    every = Every(MINUTE)
    turn = schedules.firing(every, (every.spec, T), local=True, now=T + 10.5 * MINUTE)
    assert turn == Firing(False, T, T + 11 * MINUTE, missed=10)
    assert turn.data(every.spec) == {"spec": "every 60s", "due_at": T,
                                     "next_at": T + 11 * MINUTE, "missed": 10}


def test_new_cron_and_foreign_schedules_register_at_their_next_due_time():
    cron = Cron("*/5 * * * *")
    turn = schedules.firing(cron, None, local=True, now=T + 1)
    assert turn == Firing(True, None, T + 5 * MINUTE)
    assert turn.data(cron.spec)["reason"] == "registered"
    every = Every(MINUTE)
    assert schedules.firing(every, None, local=False, now=T) == Firing(True, None, T)


def test_a_changed_spec_registers_again_or_fires_at_the_due_time_held():
    cron = Cron("0 * * * *")
    assert schedules.firing(cron, ("cron */5 * * * *", T), local=True, now=T + 1) == \
        Firing(True, T, T + 60 * MINUTE)
    every = Every(2 * MINUTE)
    assert schedules.firing(every, ("every 60s", T), local=True, now=T + 1) == \
        Firing(False, T, T + 2 * MINUTE, 0)


def test_a_round_looks_at_local_schedules_and_deployed_ones_it_does_not_define():
    local = {"mine": ("q", Every(MINUTE))}
    deployed = [("mine", "other", {"cron": "* * * * *"}), ("theirs", "q2", {"repeat": 30}),
                ("plain", "q3", {"repeat": None})]
    assert schedules.known(local, deployed) == {"mine": ("q", Every(MINUTE)),
                                                "theirs": ("q2", Every(30.0))}
    assert schedules.schedule_from({"cron": "0 0 * * *"}) == Cron("0 0 * * *")
    assert schedules.schedule_from({}) is None


@given(st.integers(1, 3600), st.integers(0, 1_000_000))
def test_an_interval_turn_fires_once_and_counts_every_due_time_it_skips(seconds, late):
    every = Every(seconds)
    now = T + late
    turn = schedules.firing(every, (every.spec, T), local=True, now=now)
    assert turn is not None and not turn.registers and turn.due_at == T
    assert now < turn.next_at <= now + seconds
    # Every due time after the one fired, up to now, is skipped (counted up to 10,000).
    assert turn.missed == min(late // seconds, 10_000)
    assert schedules.firing(every, (every.spec, turn.next_at), local=True, now=now) is None
