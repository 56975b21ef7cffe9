"""The reading commands of `evq`: events, history, tree, jobs, stats, definitions and
subscribers. Each reads the ledger read-only, so it runs beside workers."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from datetime import datetime
from enum import Enum
from typing import Any

import attrs

from . import audit, codec, durable, stats
from .cli_support import (
    EXIT_OK,
    choices,
    colour,
    figure,
    ledger_of,
    moment,
    out,
    seconds,
    table,
)
from .errors import UnknownJob
from .events import TIME_STEP, Event, EventKind
from .jobs import JobRecord
from .ledger import Ledger
from .ledger.audit_records import JobFilter

EVENT_KINDS = tuple(str(kind) for kind in EventKind)


def _names(text: str | None) -> list[str] | None:
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


# --- events ------------------------------------------------------------------------------
def cmd_events(args: argparse.Namespace) -> int:
    ledger = ledger_of(args)
    kinds = choices(args.kind, EVENT_KINDS, "event kind") if args.kind else None
    if args.seals and kinds is None:
        kinds = list(EVENT_KINDS)
    colour_on = colour()

    def show(event: Event) -> None:
        out(audit.event_json(event) if args.json else audit.event_line(event, colour_on))

    try:
        head = ledger.last_position()
        job_id = audit.resolve_job_id(ledger, args.job) if args.job else None
        wanted = durable.EventFilter.of(
            kinds, _names(args.queue), job_id,
            None if args.since is None else moment(args.since, "--since"),
            None if args.until is None else moment(args.until, "--until"))
        for event in selected_events(ledger, wanted, head, args.limit,
                                     oldest_first=args.since is not None):
            show(event)
        if args.follow:
            for event in ledger.follow(head, args.poll):
                if wanted.wants(event):
                    show(event)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def selected_events(ledger: Ledger, wanted: durable.EventFilter, head: int,
                    limit: int | None, oldest_first: bool) -> Iterator[Event]:
    """The events up to `head` that `wanted` lets through, oldest first: all of them, or
    with a `limit`, the newest `limit` (the first `limit` if `oldest_first`). Filters
    first, then the limit."""
    if limit is None or oldest_first:
        shown = 0
        # From just before `since`: events are filtered on their times to the
        # microsecond, as shown, and a stored time a fraction below one is shown as it.
        after = 0 if wanted.since is None else ledger.last_position(
            at=wanted.since - TIME_STEP)
        for event in ledger.read_events(after):
            if event.position > head or (limit is not None and shown >= limit):
                return
            if wanted.wants(event):
                shown += 1
                yield event
        return
    newest: list[Event] = []
    if limit > 0:
        for event in ledger.read_events_back(head + 1):
            if wanted.wants(event):
                newest.append(event)
                if len(newest) == limit:
                    break
    yield from reversed(newest)


# --- one job, one flow -------------------------------------------------------------------
def cmd_history(args: argparse.Namespace) -> int:
    ledger = ledger_of(args)
    job_id = audit.resolve_job_id(ledger, args.job_id)
    events = ledger.job_history(job_id)
    record = ledger.read_job(job_id)
    if args.json:
        for event in events:
            out(audit.event_json(event))
    else:
        for line in audit.history_lines(record, events, colour()):
            out(line)
    return EXIT_OK


def cmd_tree(args: argparse.Namespace) -> int:
    ledger = ledger_of(args)
    job_id = audit.resolve_job_id(ledger, args.job_id)
    tree = ledger.read_flow(job_id)
    events = audit.flow_events(ledger, tree) if tree is not None and args.history else []
    if tree is None:
        raise UnknownJob(f"job {job_id} is not in the current state (deleted); its events "
                         f"are in `evq history {audit.short_id(job_id)}`")
    if args.history:
        for event in events:
            out(audit.event_json(event) if args.json else audit.event_line(event, colour()))
    elif args.json:
        out(json.dumps(audit.tree_json(tree), ensure_ascii=False))
    else:
        for line in audit.tree_lines(tree, colour()):
            out(line)
    return EXIT_OK


# --- jobs --------------------------------------------------------------------------------
def cmd_jobs(args: argparse.Namespace) -> int:
    jobs = ledger_of(args).find_jobs(JobFilter(args.state, args.queue, args.limit))
    if args.json:
        for job in jobs:
            out(job_json(job))
        return EXIT_OK
    rows = [("id", "state", "queue", "job", "attempt", "errors", "enqueued")]
    rows += [(job.id, job.state.value, job.queue, job.name, str(job.attempt), str(job.errors),
              audit.fmt_time(job.enqueued_at)) for job in jobs]
    for line in table(rows, paint_column=1, colour_on=colour()):
        out(line)
    return EXIT_OK


def job_json(job: JobRecord) -> str:
    """Every field of a job's record as one JSON object (times in ISO-8601)."""
    return json.dumps(attrs.asdict(job, value_serializer=_plain), ensure_ascii=False)


def _plain(_: Any, __: Any, value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value


# --- stats -------------------------------------------------------------------------------
def cmd_stats(args: argparse.Namespace) -> int:
    ledger = ledger_of(args)
    ledger.check_schema()
    since = moment(args.since, "--since") if args.since else None
    until = moment(args.until, "--until") if args.until else None
    found, window = stats.compute(ledger, since, until)
    rows = [found[name].as_dict(window) for name in sorted(found)]
    if args.json:
        out(json.dumps({"window_s": round(window, 3), "queues": rows}))
        return EXIT_OK
    if not rows:
        out("no job events in that window")
        return EXIT_OK

    def spread(figures: dict[str, float] | None) -> str:
        return "-" if figures is None else "/".join(
            figure(figures[p]) for p in ("p50", "p90", "p99"))

    lines = [("queue", "done", "failed", "cancelled", "jobs/s", "errors", "wait ms p50/90/99",
              "run ms p50/90/99")]
    lines += [(r["queue"], str(r["succeeded"]), str(r["failed"]), str(r["cancelled"]),
               "-" if r["throughput_per_s"] is None else figure(r["throughput_per_s"]),
               f"{r['error_rate']:.1%}", spread(r["wait_ms"]), spread(r["run_ms"]))
              for r in rows]
    for line in table(lines):
        out(line)
    out(f"window: {figure(window)}s")
    return EXIT_OK


# --- what is deployed, who is subscribed -------------------------------------------------
def cmd_definitions(args: argparse.Namespace) -> int:
    deployed = ledger_of(args).definitions()
    if not deployed:
        out("no job definitions deployed (Context.deploy, or an orchestrator, records them)")
        return EXIT_OK
    rows = [("job", "queue", "max_attempts", "lease", "priority", "schedule", "next run")]
    for job in deployed:
        settings = job.settings
        attempts = settings.get("max_attempts")
        next_run = "-" if job.next_at is None else audit.fmt_time(
            codec.stored_datetime(job.next_at) or codec.FIRST_DATETIME)
        rows.append((job.name, job.queue, "-" if attempts is None else str(attempts),
                     seconds(settings.get("lease")), str(settings.get("priority", 0)),
                     "-" if job.schedule is None else job.schedule, next_run))
    for line in table(rows):
        out(line)
    return EXIT_OK


def cmd_subscribers(args: argparse.Namespace) -> int:
    ledger = ledger_of(args)
    ledger.check_schema()
    found = ledger.cursor_states()
    if not found:
        out("no durable event handlers on this ledger")
        return EXIT_OK
    rows = [("name", "position", "head", "lag", "held_by", "updated")]
    rows += [(state.name, str(state.position), str(state.head), str(state.lag),
              state.holder or "-",
              audit.fmt_time(codec.stored_datetime(state.updated_at) or codec.FIRST_DATETIME))
             for state in found]
    for line in table(rows):
        out(line)
    return EXIT_OK
