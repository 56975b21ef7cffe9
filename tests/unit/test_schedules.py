"""Schedules are pure: interval grids, cron matching and the catch-up rule."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import evq
from evq.schedules import Cron, Every


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def iso(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M")


def test_every_stays_on_its_grid_and_skips_missed_runs():
    every = Every(60)
    assert every.next_after(1000, 1000) == 1060
    assert every.next_after(1000, 1059.9) == 1060
    assert every.next_after(1000, 1000 + 600.5) == 1660  # ten missed: next on the grid


@pytest.mark.parametrize(("expr", "after", "expected"), [
    ("*/5 * * * *", "2026-01-01 10:02", "2026-01-01 10:05"),
    ("0 9 * * *", "2026-01-01 09:00", "2026-01-02 09:00"),
    ("30 2 1 * *", "2026-01-15 00:00", "2026-02-01 02:30"),
    ("0 0 * * 1", "2026-01-01 00:00", "2026-01-05 00:00"),  # Jan 1 2026 is a Thursday
    ("0 0 * * 7", "2026-01-01 00:00", "2026-01-04 00:00"),  # 7 is Sunday
    ("0 12 13 * 5", "2026-01-01 00:00", "2026-01-02 12:00"),  # day 13 OR a Friday
    ("15,45 8-9 * 3 *", "2026-01-01 00:00", "2026-03-01 08:15"),
    ("0 0 29 2 *", "2026-01-01 00:00", "2028-02-29 00:00"),
])
def test_cron_next(expr, after, expected):
    assert iso(Cron(expr).next_after(0, ts(after))) == expected


@pytest.mark.parametrize("expr", ["* * * *", "60 * * * *", "* 24 * * *", "a * * * *",
                                  "*/0 * * * *", "5-1 * * * *", "0 0 31 2 *"])
def test_bad_cron_is_refused(expr):
    with pytest.raises(evq.InvalidInput):
        Cron(expr).next_after(0, 0)


@pytest.mark.parametrize("seconds", [0, -1, float("inf"), "60", True])
def test_bad_interval_is_refused(seconds):
    with pytest.raises(evq.InvalidInput):
        Every(seconds)
