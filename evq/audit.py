"""Reading the ledger for people: job ids from what they type, event lines, job
timelines and flow trees. The reads are the ledger's (read-only, short transactions, so
they run beside workers); the CLI prints what these functions make of them.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from . import codec
from .errors import InvalidInput, UnknownJob
from .events import Event
from .jobs import JobRecord
from .ledger import Ledger
from .ledger.audit_records import FlowTree


def short_id(job_id: str) -> str:
    """The part of a job id people can tell apart: its random tail (ids begin with the
    time they were made, which jobs enqueued together share)."""
    return job_id[-8:]


MAX_ID_LENGTH = 1000  # ids evq makes have 32 characters; imported ones may be longer
CANDIDATES_SHOWN = 10


def resolve_job_id(ledger: Ledger, text: str) -> str:
    """A full job id from an id, the short id shown everywhere (its tail), or a unique
    prefix or suffix of one, all matched literally. Raises UnknownJob when no job
    matches, InvalidInput (naming the candidates) when more than one does."""
    if not text:
        raise UnknownJob("give a job id")
    if len(text) > MAX_ID_LENGTH or not codec.storable(text):
        raise UnknownJob(f"no such job: no job id in this ledger is {_quoted(text)}")
    found = ledger.find_job_ids(text, CANDIDATES_SHOWN + 1)
    if len(found) == 1:
        return found[0]
    if not found:
        raise UnknownJob(f"no such job: no job with id {_quoted(text)} (or ending or "
                         "starting so) in this ledger")
    lines = [f"{_quoted(text)} matches more than one job; give more of the id:"]
    labels = ledger.job_labels(found[:CANDIDATES_SHOWN])
    for job_id in found[:CANDIDATES_SHOWN]:
        name, state = labels.get(job_id) or ("?", "?")
        lines.append(f"  {printable(job_id)}  {printable(name)}  {printable(state)}")
    if len(found) > CANDIDATES_SHOWN:
        lines.append("  ... and more")
    raise InvalidInput("\n".join(lines))



def _quoted(text: str, limit: int = 80) -> str:
    shown = text if len(text) <= limit else text[:limit] + "..."
    return "'" + printable(shown) + "'"


def flow_events(ledger: Ledger, tree: FlowTree) -> list[Event]:
    """Every event of every job of a flow, in ledger order: the whole tree's story."""
    return ledger.events_of_jobs([node.id for node in tree.walk()])


# --- formatting ------------------------------------------------------------------------
# What must not reach a terminal as it is: C0 controls (newline, carriage return, escape,
# ...), DEL, C1 controls, lone surrogates (which cannot be printed), the line and paragraph
# separators, and the marks that reorder text on screen (bidi embeddings, overrides,
# isolates).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e"
                          "\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")


def printable(value: object) -> str:
    """`value` as text that shows as what it is on one line of a terminal: every
    character that could move the cursor, start a line, change colours or reorder what
    is shown is written as an escape (a newline as \\n, ESC as \\x1b, U+202E as
    \\u202e). Everything people read from the ledger goes through here; JSON output
    does not need to."""
    text = value if isinstance(value, str) else str(value)
    if text.isascii() and text.isprintable():
        return text
    return _UNPRINTABLE.sub(_escape, text)


def fmt_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def event_json(event: Event) -> str:
    return json.dumps({
        "position": event.position, "at": event.at.isoformat(), "kind": event.kind,
        "job_id": event.job_id, "queue": event.queue, "job": event.job,
        "attempt": event.attempt, "worker": event.worker, "data": event.data, "v": event.v,
    }, ensure_ascii=False)


# ANSI colours by how a kind or state reads: done, trouble, failure, neutral.
_COLOURS = {"success": "32", "succeeded": "32", "error": "33", "rescue": "33",
            "defer": "33", "orphan": "33", "reject": "33", "fail": "31", "failed": "31",
            "expire": "31", "expired": "31", "cancel": "35", "cancelled": "35",
            "running": "36", "dequeue": "36", "run": "36"}


def paint(text: str, key: str, colour: bool) -> str:
    """`text` in the colour of `key` (a kind or a state) when colour is on."""
    code = _COLOURS.get(key)
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text


def event_line(event: Event, colour: bool = False) -> str:
    """One event on one line: position, time, kind, job, attempt, worker, the gist (every
    value from the ledger escaped, see `printable`)."""
    who = (printable(f"{event.job}#{short_id(str(event.job_id))}") if event.job_id
           else "-")
    parts = [printable(f"{event.position:>7}"), fmt_time(event.at),
             paint(f"{printable(event.kind):<9}", event.kind, colour), who]
    if event.attempt is not None:
        parts.append(printable(f"attempt={event.attempt}"))
    if event.worker:
        parts.append(printable(f"worker={event.worker}"))
    gist = describe(event)
    if gist:
        parts.append(gist)
    return "  ".join(parts)


def describe(event: Event) -> str:
    """A short human reading of an event's data, on one line, escaped. Data that does not
    have its kind's shape (a forged or damaged row) is shown as it is."""
    try:
        return printable(_describe(event))
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError):
        return "data=" + _short(event.data, 200)


def _describe(event: Event) -> str:
    data = event.data
    if set(data) == {"unreadable"}:
        return "unreadable data: " + _short(data["unreadable"], 200)
    kind = event.kind
    if kind == "enqueue":
        text = f"payload={_short(data.get('payload'))}"
        if data.get("run_at") and data["run_at"] > event.timestamp + 0.0005:
            text += f" run_in={data['run_at'] - event.timestamp:.3f}s"
        if data.get("priority"):
            text += f" priority={data['priority']}"
        return text
    if kind in ("error", "rescue"):
        error = data.get("error") or {}
        text = f"{error.get('type')}: {error.get('message')}"
        if data.get("retry_at") is not None:
            text += f" -> retry in {data.get('retry_in', 0):.3f}s"
        else:
            text += " -> no retry"
        return text
    if kind == "success":
        return f"result={_short(data.get('result'))}"
    if kind == "seal":
        covered = f"{data.get('first')}..{event.position - 1}"
        return f"seals {covered} hash={str(data.get('hash'))[:16]}..."
    if kind == "wait":
        return "waits for " + ", ".join(
            f"#{short_id(c['id'])}" + ("" if c["on_failure"] == "wait" else
                                      f" ({c['on_failure']} on failure)")
            for c in data.get("children", []))
    if kind == "child":
        text = f"child #{short_id(data.get('child', ''))} {data.get('outcome')}"
        if data.get("outcome") == "succeeded":
            return text + f" result={_short(data.get('result'))}"
        if data.get("by"):
            return text + f" by #{short_id(data['by'])}"
        error = data.get("error") or {}
        return text + (f" ({error.get('type')}: {error.get('message')})" if error else "")
    if kind == "ready":
        return "all children settled"
    if kind == "run_now":
        was = data.get("was")
        early = (f" ({was - data['run_at']:.3f}s early)"
                 if isinstance(was, (int, float)) and isinstance(data.get("run_at"), (int, float))
                 else "")
        return f"made due now{early} reason={data.get('reason')}"
    if kind in ("expire", "fail", "cancel", "delete", "requeue"):
        text = f"reason={data.get('reason')}"
        if data.get("child"):
            text += f" child=#{short_id(data['child'])}"
        if data.get("parent"):
            text += f" parent=#{short_id(data['parent'])}"
        if kind == "requeue" and data.get("run_at") is not None:
            text += f" run_in={data['run_at'] - event.timestamp:.3f}s"
        return text
    return ""


def history_lines(record: JobRecord | None, events: list[Event], colour: bool = False
                  ) -> list[str]:
    """A job's timeline: a header with its current state, then one line per event with
    the time since the previous one, errors with their traceback."""
    if not events:
        return []
    first = events[0]
    state = paint(record.state.value, record.state.value, colour) if record else \
        "deleted (removed from the current state)"
    lines = [printable(f"job {first.job_id}  {first.job}  queue={first.queue}  state=")
             + state]
    if record is not None and record.result is not None:
        lines.append(f"result: {_short(record.result, 200)}")
    previous = first.at
    for event in events:
        wait = (event.at - previous).total_seconds()
        previous = event.at
        attempt = printable(f"#{event.attempt}") if event.attempt is not None else "  "
        who = printable(f" by {event.worker}") if event.worker else ""
        gist = describe(event)
        kind = paint(f"{printable(event.kind):<9}", event.kind, colour)
        lines.append(f"  {fmt_time(event.at)}  +{wait:8.3f}s  {kind} {attempt:>3}"
                     f"{who}{'  ' + gist if gist else ''}")
        # A traceback keeps its lines, each escaped on its own (a \r or U+2028 in it is
        # shown, never obeyed).
        lines.extend("        | " + printable(line) for line in _traceback(event))
    return lines


def _traceback(event: Event) -> list[str]:
    error = event.data.get("error") if event.kind == "error" else None
    trace = error.get("traceback") if isinstance(error, dict) else None
    return str(trace).rstrip().split("\n") if trace else []


def tree_lines(tree: FlowTree, colour: bool = False) -> list[str]:
    """A flow as an indented tree: each job's state, attempts and result or error, and
    how its parent treats its failure."""
    lines: list[str] = []

    def visit(node: FlowTree, lead: str, branch: str) -> None:
        job = node.job
        parts = [printable(f"{node.name}#{short_id(node.id)}"),
                 printable(f"queue={node.queue}"),
                 "state=" + paint(printable(node.state), node.state, colour)]
        if job is not None and job.attempt:
            parts.append(printable(f"attempt={job.attempt}/{job.max_attempts or '-'}"))
        if node.edge is not None:
            if node.edge.on_failure != "wait":
                parts.append(printable(f"on_failure={node.edge.on_failure}"))
            if node.edge.state not in ("open", "succeeded"):
                parts.append(printable(f"edge={node.edge.state}"))
        if job is not None and job.blocked_by:
            parts.append(paint(printable(f"blocked_by=#{short_id(job.blocked_by)}"),
                               "failed", colour))
        if node.result is not None:
            parts.append(f"result={_short(node.result)}")
        elif node.error and node.state != "succeeded":
            error = node.error if isinstance(node.error, dict) else {"message": node.error}
            parts.append(printable(f"error={error.get('type')}: ")
                         + _short(error.get("message"), 80))
        lines.append(lead + branch + "  ".join(parts))
        below = lead + ("" if not branch else "    " if branch == "└── " else "│   ")
        for i, child in enumerate(node.children):
            visit(child, below, "└── " if i == len(node.children) - 1 else "├── ")

    visit(tree, "", "")
    return lines


def tree_json(node: FlowTree) -> dict[str, Any]:
    """A flow as one nested JSON object (`evq tree --json`)."""
    job, edge = node.job, node.edge
    return {"id": node.id, "name": node.name, "queue": node.queue, "state": node.state,
            "attempt": job.attempt if job else None,
            "blocked_by": job.blocked_by if job else None,
            "on_failure": edge.on_failure if edge else None,
            "edge": edge.state if edge else None,
            "result": node.result, "error": node.error,
            "children": [tree_json(child) for child in node.children]}


def _short(value: Any, limit: int = 60) -> str:
    """A value as JSON on one line, cut at `limit` characters, escaped."""
    text = json.dumps(value, ensure_ascii=False)
    return printable(text if len(text) <= limit else text[: limit - 3] + "...")
