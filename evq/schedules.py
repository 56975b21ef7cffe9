"""When repeating jobs are due: every N seconds (cuckmq's repeatSecs) or a cron
expression. Pure functions of time (UTC epoch seconds), so they are easy to test.

Catch-up rule: after downtime a schedule fires once, for the first due time it missed
(the one the ledger expects; its `schedule` event also says how many later due times it
skipped), then goes on from the next due time after now. It never fires a burst.
`firing` decides a schedule's turn at an orchestrator's round from what the ledger holds
of it; the engine appends what it says.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from .errors import InvalidInput

# Day of week is read over 0-7 and 7 folded onto 0 (both are Sunday).
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 7))


@attrs.frozen
class Every:
    """Every `seconds`, counted from the first time the schedule fired."""

    seconds: float

    def __attrs_post_init__(self) -> None:
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, (int, float)) \
                or not math.isfinite(self.seconds) or self.seconds <= 0:
            raise InvalidInput(f"repeat must be a number of seconds > 0, got {self.seconds!r}")

    @property
    def spec(self) -> str:
        return f"every {self.seconds:g}s"

    def first(self, now: float) -> float:
        return now

    def next_after(self, due: float, now: float) -> float:
        """The first due time after `now`, on the grid that starts at `due`."""
        steps = math.floor((now - due) / self.seconds) + 1
        return due + max(1, steps) * self.seconds


@attrs.frozen
class Cron:
    """A five-field cron expression (minute hour day-of-month month day-of-week), in UTC.
    Fields take `*`, numbers, ranges `a-b`, lists `a,b` and steps `*/n` or `a-b/n`;
    day of week is 0-6 from Sunday (7 is Sunday too). As in cron, when both day fields
    are restricted a day matches if either does."""

    expression: str
    _sets: tuple[frozenset[int], ...] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        parts = self.expression.split() if isinstance(self.expression, str) else []
        if len(parts) != 5:
            raise InvalidInput(f"cron expression {self.expression!r} needs 5 fields: "
                               "minute hour day-of-month month day-of-week")
        sets = tuple(_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True))
        object.__setattr__(self, "_sets", sets)

    @property
    def spec(self) -> str:
        return f"cron {self.expression}"

    def first(self, now: float) -> float:
        return self.next_after(now, now)

    def next_after(self, due: float, now: float) -> float:
        """The first matching minute strictly after `now`."""
        minutes, hours, days, months, weekdays = self._sets
        day_star = self.expression.split()[2] == "*"
        week_star = self.expression.split()[4] == "*"
        moment = datetime.fromtimestamp(now, UTC).replace(second=0, microsecond=0)
        moment += timedelta(minutes=1)
        # The longest real gap is Feb 29 across a skipped leap year (e.g. 2096 to 2104).
        horizon = moment.year + 8
        while moment.year <= horizon:
            if moment.month not in months:
                moment = (moment.replace(day=1, hour=0, minute=0) + timedelta(days=32)
                          ).replace(day=1)
                continue
            weekday = (moment.weekday() + 1) % 7
            day_ok = (moment.day in days) if week_star else (
                (weekday in weekdays) if day_star else
                (moment.day in days or weekday in weekdays))
            if not day_ok:
                moment = moment.replace(hour=0, minute=0) + timedelta(days=1)
                continue
            if moment.hour not in hours:
                moment = moment.replace(minute=0) + timedelta(hours=1)
                continue
            if moment.minute not in minutes:
                moment += timedelta(minutes=1)
                continue
            return moment.timestamp()
        raise InvalidInput(f"cron expression {self.expression!r} never matches")


def _field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if base == "*":
                start, end = low, high
            elif "-" in base:
                first, last = base.split("-", 1)
                start, end = int(first), int(last)
            else:
                start = end = int(base)
                if step_text:
                    end = high
        except ValueError:
            raise InvalidInput(f"cron {name} field {text!r} is not valid") from None
        if step < 1 or start < low or end > high or start > end:
            raise InvalidInput(f"cron {name} field {text!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    if name == "day of week":
        values = {value % 7 for value in values}
    return frozenset(values)


Schedule = Every | Cron


def parse(repeat: float | None, cron: str | None) -> Schedule | None:
    if repeat is not None and cron is not None:
        raise InvalidInput("give repeat or cron, not both")
    if repeat is not None:
        return Every(repeat)
    if cron is not None:
        return Cron(cron)
    return None


def schedule_from(settings: Mapping[str, Any]) -> Schedule | None:
    """The schedule in a deployed definition's settings (repeat or cron), if any."""
    if settings.get("repeat") is not None:
        return Every(float(settings["repeat"]))
    if settings.get("cron") is not None:
        return Cron(str(settings["cron"]))
    return None


def known(local: Mapping[str, tuple[str, Schedule]],
          deployed: Iterable[tuple[str, str, Mapping[str, Any]]]
          ) -> dict[str, tuple[str, Schedule]]:
    """Every schedule a round looks at: job name -> (queue, schedule). `local` are the
    ones this process defines; `deployed` are (name, queue, settings) of the deployed
    definitions, whose schedules count too where this process does not define the name
    (they fire as orphans)."""
    found = dict(local)
    for name, queue, settings in deployed:
        if name not in found:
            schedule = schedule_from(settings)
            if schedule is not None:
                found[name] = (queue, schedule)
    return found


def missed(schedule: Schedule, due: float, now: float) -> int:
    """How many due times after `due` and up to `now` the catch-up rule skips."""
    count = 0
    moment = schedule.next_after(due, due)
    while moment <= now and count < 10_000:
        count += 1
        moment = schedule.next_after(moment, moment)
    return count


@attrs.frozen
class Firing:
    """A schedule's turn: it registers (new, or its spec changed: it starts at `next_at`
    and fires nothing now; `due_at` is the due time the ledger held before, if any), or
    fires for `due_at`, skipping `missed` later due times, and is next due at `next_at`."""

    registers: bool
    due_at: float | None
    next_at: float
    missed: int = 0

    def data(self, spec: str) -> dict[str, Any]:
        """The `schedule` event's data (to which firing adds the job fired, or why none)."""
        if self.registers:
            return {"spec": spec, "due_at": self.due_at, "next_at": self.next_at,
                    "job_id": None, "reason": "registered"}
        return {"spec": spec, "due_at": self.due_at, "next_at": self.next_at,
                "missed": self.missed}


def firing(schedule: Schedule, stored: tuple[str, float] | None, *, local: bool,
           now: float) -> Firing | None:
    """What a schedule does at `now`, given the (spec, next due time) the ledger holds of
    it (None: never seen) and whether this process defines its job; None: not due.

    A new or changed cron schedule, and any schedule this process does not define,
    starts at its next due time. A new interval schedule this process defines fires at
    once; a changed one fires at the due time the ledger held, and goes on from there."""
    if stored is None or stored[0] != schedule.spec:
        if isinstance(schedule, Cron) or not local:
            return Firing(True, stored[1] if stored else None, schedule.first(now))
        due = now if stored is None else stored[1]
    else:
        due = stored[1]
    if due > now:
        return None
    return Firing(False, due, schedule.next_after(due, now), missed(schedule, due, now))
