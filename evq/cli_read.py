"""The reading commands of `evq`: events, history, tree, jobs, stats, definitions and
subscribers. Each opens the ledger read-only, so it runs beside workers."""

from __future__ import annotations

import argparse
import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from enum import Enum
from typing import Any

import attrs

from . import audit, codec, durable, flows, stats
from .cli_support import (
    EXIT_OK,
    choices,
    colour,
    figure,
    ledger_path,
    out,
    reading,
    seconds,
    table,
)
from .errors import UnknownJob
from .events import Event, EventKind, event_from_row
from .jobs import JobRecord
from .ledger.sqlite import sql

EVENT_KINDS = tuple(str(kind) for kind in EventKind)
_CHUNK = 2000


def _names(text: str | None) -> list[str] | None:
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


# --- events ------------------------------------------------------------------------------
def cmd_events(args: argparse.Namespace) -> int:
    path = ledger_path(args)
    kinds = choices(args.kind, EVENT_KINDS, "event kind") if args.kind else None
    if args.seals and kinds is None:
        kinds = list(EVENT_KINDS)
    colour_on = colour()

    def show(event: Event) -> None:
        out(audit.event_json(event) if args.json else audit.event_line(event, colour_on))

    try:
        with reading(path) as conn:
            job_id = audit.resolve_job_id(conn, args.job) if args.job else None
            wanted = durable.EventFilter.of(kinds, _names(args.queue), job_id, args.since,
                                            args.until)
            head = int(conn.execute(sql.LAST_POSITION).fetchone()[0] or 0)
            for event in selected_events(conn, wanted, head, args.limit,
                                         oldest_first=args.since is not None):
                show(event)
            if args.follow:
                for event in audit.follow(conn, head, args.poll):
                    if wanted.wants(event):
                        show(event)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def selected_events(conn: sqlite3.Connection, wanted: durable.EventFilter, head: int,
                    limit: int | None, oldest_first: bool) -> Iterator[Event]:
    """The events up to `head` that `wanted` lets through, oldest first: all of them, or
    with a `limit`, the newest `limit` (the first `limit` if `oldest_first`). Filters
    first, then the limit."""
    if limit is None or oldest_first:
        shown = 0
        for event in audit.iter_events(conn):
            if event.position > head or (limit is not None and shown >= limit):
                return
            if wanted.wants(event):
                shown += 1
                yield event
        return
    newest: list[Event] = []
    before = head + 1
    while len(newest) < limit:
        rows = conn.execute(sql.EVENTS_BEFORE, (before, _CHUNK)).fetchall()
        for row in rows:
            event = event_from_row(tuple(row))
            if wanted.wants(event):
                newest.append(event)
                if len(newest) == limit:
                    break
        if len(rows) < _CHUNK:
            break
        before = rows[-1][0]
    yield from reversed(newest)


# --- one job, one flow -------------------------------------------------------------------
def cmd_history(args: argparse.Namespace) -> int:
    with reading(ledger_path(args)) as conn:
        job_id = audit.resolve_job_id(conn, args.job_id)
        events = audit.job_events(conn, job_id)
        record = audit.job_record(conn, job_id)
    if args.json:
        for event in events:
            out(audit.event_json(event))
    else:
        for line in audit.history_lines(record, events, colour()):
            out(line)
    return EXIT_OK


def cmd_tree(args: argparse.Namespace) -> int:
    with reading(ledger_path(args)) as conn:
        job_id = audit.resolve_job_id(conn, args.job_id)
        tree = flows.read_tree(conn, job_id)
        events = audit.flow_events(conn, tree) if tree is not None and args.history else []
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
    limit = -1 if args.limit is None else args.limit
    with reading(ledger_path(args)) as conn:
        jobs = [JobRecord.from_row(tuple(row)) for row in
                conn.execute(sql.LIST_JOBS_WHERE, (args.state, args.queue, limit))]
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
    with reading(ledger_path(args)) as conn:
        since = codec.parse_time(args.since, "--since") if args.since else None
        until = codec.parse_time(args.until, "--until") if args.until else None
        found, window = stats.compute(conn, since, until)
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
    with reading(ledger_path(args)) as conn:
        schedules = {name: (spec, next_at) for name, spec, next_at in
                     conn.execute(sql.LIST_SCHEDULES)}
        deployed = conn.execute(sql.LIST_DEFINITIONS).fetchall()
    if not deployed:
        out("no job definitions deployed (Context.deploy, or an orchestrator, records them)")
        return EXIT_OK
    rows = [("job", "queue", "max_attempts", "lease", "priority", "schedule", "next run")]
    for name, queue, data in deployed:
        settings = codec.stored_object(data) or {}
        spec, next_at = schedules.get(name, ("-", None))
        attempts = settings.get("max_attempts")
        rows.append((name, queue, "-" if attempts is None else str(attempts),
                     seconds(settings.get("lease")), str(settings.get("priority", 0)),
                     spec, "-" if next_at is None else
                     audit.fmt_time(codec.stored_datetime(next_at) or codec.FIRST_DATETIME)))
    for line in table(rows):
        out(line)
    return EXIT_OK


def cmd_subscribers(args: argparse.Namespace) -> int:
    with reading(ledger_path(args)) as conn:
        found = durable.states(conn)
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
