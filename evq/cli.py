"""The `evq` command: look into an evq ledger, run its jobs, and look after it.

Commands: demo, web, worker, events, history, tree, jobs, stats, definitions, subscribers,
retry, cancel, delete, run-now, replay, export, import, verify, archive, schema, migrate
(the reading ones are in evq/cli_read.py). Every command takes `--db PATH` (a ledger file, or
sqlite:///PATH; or the EVQ_DB environment variable).

Exit codes, stable for scripts:
  0  done
  1  a check failed (verify found a mismatch)
  2  bad usage or input, or a ledger that cannot be used as asked (locked, read-only,
     full, damaged, not an evq ledger); the message on stderr says which and what to do
  3  not found: no such job, no ledger at that path, or no such file or directory
  4  verified, but some events could not be checked (archived, their file not given)
  130  interrupted (Ctrl-C)
No error a user can cause prints a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from . import admin, audit, demo, files, transfer
from . import archive as archiving
from . import verify as verifying
from .cli_read import (
    EVENT_KINDS,
    cmd_definitions,
    cmd_events,
    cmd_history,
    cmd_jobs,
    cmd_stats,
    cmd_subscribers,
    cmd_tree,
)
from .cli_support import (
    EXIT_CHECK_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNCHECKED,
    EXIT_USAGE,
    count,
    duration,
    exit_code,
    ledger_of,
    ledger_spec,
    moment,
)
from .cli_support import out as _out
from .context import Context
from .errors import EvqError, InvalidInput
from .jobs import JobState
from .ledger import Ledger, open_ledger, schema_sql
from .ledger.records import Stopped


def _progress_bar(label: str) -> Callable[[int, int], None]:
    """A one-line progress bar on stderr (a terminal only: never in pipes or logs)."""

    def show(done: int, total: int) -> None:
        filled = int(30 * done / total) if total else 30
        end = "\n" if done >= total else ""
        print(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}", end=end,
              file=sys.stderr, flush=True)

    return show


def _log_to_stderr(level: int) -> None:
    """evq's loggers (stdlib `evq`, see evq/logs.py) print to stderr at `level`: the
    command is an application, so it configures its own output."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)-7s] %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("evq")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def _file_mode() -> int:
    """The mode of the files a command creates: EVQ_FILE_MODE (octal, such as 640), or
    0600."""
    text = os.environ.get("EVQ_FILE_MODE")
    if not text:
        return files.FILE_MODE
    try:
        return files.check_mode(int(text, 8))
    except ValueError:
        raise InvalidInput(f"EVQ_FILE_MODE must be octal permission bits such as 600 or "
                           f"640, got {text!r}") from None


def cmd_demo(args: argparse.Namespace) -> int:
    where = args.db or os.environ.get("EVQ_DB") or "evq-demo.db"
    ids = asyncio.run(demo.run_demo(where, _out, _file_mode()))
    _out("\ntimelines read back from the ledger:\n")
    for line in demo.timelines(where, ids):
        _out(line)
    shown = open_ledger(where).location  # a URL's password is not repeated
    _out(f"see it again: evq events --db {shown}   or   "
         f"evq history {audit.short_id(ids[1])} --db {shown}")
    return EXIT_OK


def load_context(spec: str) -> Context:
    """`package.module:attribute`: a Context, or a function that returns one."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise EvqError(f"APP must look like package.module:ctx, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EvqError(f"cannot import {module_name!r} for APP {spec!r}: {exc}") from None
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise EvqError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if callable(found) and not isinstance(found, Context) and _takes_no_arguments(found):
        try:
            found = found()
        except Exception as exc:
            raise InvalidInput(f"APP {spec!r}: calling {attribute}() to get the Context "
                               f"raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(found, Context):
        raise InvalidInput(f"APP {spec!r} is a {type(found).__name__}, not an evq.Context "
                           "(nor a function of no arguments returning one)")
    return found


def _takes_no_arguments(function: Callable[..., object]) -> bool:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return False
    return all(parameter.default is not parameter.empty
               or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
               for parameter in signature.parameters.values())


def cmd_worker(args: argparse.Namespace) -> int:
    ctx = load_context(args.app)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None

    async def serve() -> None:
        async with ctx:
            worker = ctx.worker(queues=queues, concurrency=args.concurrency, name=args.name,
                                grace=args.grace)
            if args.no_orchestrator:
                await worker.run(handle_signals=True)
                return
            orchestrator = ctx.orchestrator(interval=args.interval,
                                            leader_lease=args.leader_lease)
            housekeeping = asyncio.create_task(orchestrator.run())
            try:
                await worker.run(handle_signals=True)
            finally:
                orchestrator.stop()
                await housekeeping

    asyncio.run(serve())
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    source = ledger_of(args)
    source.check_schema()
    upto, upto_at = args.upto, None
    if args.at is not None:
        upto_at = moment(args.at, "--at")
        found = source.last_position(at=upto_at)
        upto = found if upto is None else min(upto, found)
    files.refuse_existing(Path(args.to), "replay", database=True)
    kept, _ = archiving.load(args.archive or [])
    target = open_ledger(args.to, file_mode=_file_mode())
    count = source.replay_into(target, upto,
                               _progress_bar("replaying") if sys.stderr.isatty() else None,
                               archived=kept, upto_at=upto_at)
    # (Not reading the new file back: a reader would leave its -wal and -shm beside it.)
    _out(f"replayed {count} events from {source.location} into {target.location}"
         + (f" (as it stood at {args.at})" if args.at is not None
            else f" (up to position {upto})" if upto is not None else ""))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    ledger = ledger_of(args)
    ledger.check_schema()
    if args.to:
        count = transfer.export_file(ledger, args.to, _file_mode())
        print(f"exported {count} events to {args.to}", file=sys.stderr)
    else:
        for line in transfer.export_lines(ledger):
            _out(line)
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    spec = ledger_spec(args)
    source = sys.stdin if args.source == "-" else open(args.source, encoding="utf-8")  # noqa: SIM115
    try:
        target = open_ledger(spec, file_mode=_file_mode())
        count = transfer.import_lines(target, source)
    finally:
        if source is not sys.stdin:
            source.close()
    _out(f"imported {count} events into {target.location}; hash chain holds")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    report = verifying.verify_ledger(ledger_of(args), args.expect_head, args.archive or [])
    for line in report.lines:
        _out(audit.printable(line))
    return {verifying.Outcome.OK: EXIT_OK, verifying.Outcome.FAILED: EXIT_CHECK_FAILED,
            verifying.Outcome.UNCHECKED: EXIT_UNCHECKED}[report.outcome]


def _job_action(args: argparse.Namespace) -> tuple[Ledger, str]:
    ledger = ledger_of(args, busy_timeout=args.busy_timeout)
    return ledger, audit.resolve_job_id(ledger, args.job_id)


def cmd_retry(args: argparse.Namespace) -> int:
    ledger, job_id = _job_action(args)
    new_id = admin.retry(ledger, job_id, args.reason)
    _out(audit.printable(f"retrying {job_id} as new job {new_id}"))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    ledger, job_id = _job_action(args)
    stopped, *descendants = admin.cancel(ledger, job_id, args.reason)
    _out(audit.printable(f"cancelled {job_id}")
         + (" (its worker is told to stop)" if stopped.was_running else ""))
    _say_descendants(descendants)
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    ledger, job_id = _job_action(args)
    descendants = admin.delete(ledger, job_id, args.reason)
    _out(audit.printable(f"deleted {job_id}")
         + " from the current state (its events stay in the ledger)")
    _say_descendants(descendants)
    return EXIT_OK


def cmd_run_now(args: argparse.Namespace) -> int:
    ledger, job_id = _job_action(args)
    asked = time.time()
    due = admin.run_now(ledger, job_id, args.reason)
    shown = audit.fmt_time(datetime.fromtimestamp(due, UTC))
    if due < asked:
        _out(audit.printable(f"{job_id} was already due (run_at {shown}): nothing written"))
    else:
        _out(audit.printable(f"{job_id} is due now (run_at {shown})"))
    return EXIT_OK


def _say_descendants(descendants: list[Stopped]) -> None:
    """Name the flow descendants that a cancel or delete took along, if any."""
    if descendants:
        busy = sum(1 for child in descendants if child.was_running)
        _out(f"also cancelled {len(descendants)} job(s) of its flow"
             + (f" ({busy} running: their workers are told to stop)" if busy else "")
             + ": " + audit.printable(", ".join(audit.short_id(child.job_id)
                                                for child in descendants)))


def cmd_archive(args: argparse.Namespace) -> int:
    ledger = ledger_of(args)
    ledger.check_schema()
    done = archiving.archive(ledger, moment(args.before, "--before"), args.to)
    if not done.events:
        _out("nothing to archive: no job deleted before that time still has events here")
    else:
        _out(f"archived {done.events} events of {done.jobs} "
             f"job{'s' if done.jobs != 1 else ''} to {done.file} "
             f"(sha256 {done.sha256})")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    # The schema of --engine, or of the engine --db or EVQ_DB names; with none of them,
    # the default (SQLite) engine's. No ledger is opened.
    if args.engine:
        _out(schema_sql(args.engine))
        return EXIT_OK
    given = args.db or os.environ.get("EVQ_DB")
    _out(open_ledger(given or "evq.db").schema_text())
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    ledger = ledger_of(args, file_mode=_file_mode())
    before, now = ledger.migrate()
    _out(f"{ledger.location}: schema version {before} -> {now}")
    return EXIT_OK


def cmd_web(args: argparse.Namespace) -> int:
    try:
        from .web.serve import serve
    except ImportError as exc:
        raise InvalidInput(f"evq web needs its extra ({exc.name} is missing): "
                           "pip install 'evq[web]'") from None
    spec = ledger_spec(args)
    serve(spec, args.host, args.port, read_only=args.read_only,
          ready=lambda url: _out(f"evq web: {url} shows {audit.printable(ledger_of(args).location)}"
                                 f"{' (read-only)' if args.read_only else ''}; Ctrl-C stops it"))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evq", description="Look into an evq ledger, run its jobs, and look after it.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, run: Callable[[argparse.Namespace], int], text: str
                ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--db", help="the ledger file (default: $EVQ_DB)")
        p.set_defaults(run=run)
        return p

    command("demo", cmd_demo, "run a short tour on a ledger file (default evq-demo.db)")
    p = command("web", cmd_web, "serve the dashboard (needs `pip install 'evq[web]'`)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; anything else needs "
                   "EVQ_WEB_PASSWORD or EVQ_WEB_TOKEN)")
    p.add_argument("--port", type=int, default=8470, help="port (default 8470)")
    p.add_argument("--read-only", action="store_true", help="show, never act")
    p = sub.add_parser("worker", help="serve jobs: a job server for APP (module:ctx)",
                       description="Serve the jobs of APP (`package.module:ctx`, a Context "
                       "or a function returning one) until SIGTERM or SIGINT.")
    p.add_argument("app", help="package.module:attribute naming an evq.Context")
    p.add_argument("--queues", help="comma-separated queues (default: those run_on_startup)")
    p.add_argument("--concurrency", type=int, default=10, help="jobs at once (default 10)")
    p.add_argument("--name", help="worker name (default: stable, from the host and the "
                   "queues, such as web1:mail; see the README's Worker names)")
    p.add_argument("--no-orchestrator", action="store_true",
                   help="do not run an orchestrator (schedules, cleanup, rescue) here")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between orchestrator rounds (default 1)")
    p.add_argument("--leader-lease", type=float, default=10.0,
                   help="seconds a silent orchestrator leader keeps the lead (default 10)")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds running jobs get to finish on shutdown (default 30)")
    p.set_defaults(run=cmd_worker)
    p = command("events", cmd_events, "print the event log, oldest first")
    p.add_argument("--json", action="store_true", help="JSON lines")
    p.add_argument("--job", help="only this job id")
    p.add_argument("--kind", help="only these kinds, comma-separated (one of: "
                   + ", ".join(EVENT_KINDS) + ")")
    p.add_argument("--queue", help="only these queues, comma-separated")
    p.add_argument("--since", help="only events at or after this time (ISO-8601, or ago: 1h)")
    p.add_argument("--until", help="only events at or before this time (ISO-8601, or ago)")
    p.add_argument("--limit", type=count, metavar="N",
                   help="only the newest N events that pass the filters (with --since: "
                   "the first N after it)")
    p.add_argument("--seals", action="store_true",
                   help="also the hash chain's seal events (hidden otherwise)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="then keep printing new events as any process commits them")
    p.add_argument("--poll", type=float, default=0.1, help=argparse.SUPPRESS)
    p = command("history", cmd_history, "one job's timeline")
    p.add_argument("job_id", help="a job id or a unique prefix of one")
    p.add_argument("--json", action="store_true", help="JSON lines")
    p = command("tree", cmd_tree, "a flow's current state, as a tree")
    p.add_argument("job_id", help="any job of the flow: an id or a unique prefix of one")
    p.add_argument("--json", action="store_true",
                   help="one JSON object, nested (with --history: JSON lines)")
    p.add_argument("--history", action="store_true",
                   help="instead, every event of every job of the flow, in ledger order")
    p = command("jobs", cmd_jobs, "current jobs, oldest first")
    p.add_argument("--state", choices=[str(state) for state in JobState],
                   help="only jobs in this state")
    p.add_argument("--queue", help="only jobs of this queue")
    p.add_argument("--limit", type=count, metavar="N", help="only the newest N jobs")
    p.add_argument("--json", action="store_true",
                   help="JSON lines, one job each, with every field of its record")
    p = command("replay", cmd_replay, "rebuild the projection from the events into a new file")
    p.add_argument("--to", required=True, help="the new ledger file")
    p.add_argument("--upto", type=count, metavar="POSITION",
                   help="replay only up to this position")
    p.add_argument("--at", help="replay only what had happened at this time (ISO-8601, or "
                                    "ago: 2d)")
    p.add_argument("--archive", action="append", metavar="FILE",
                   help="archive files whose events to put back in place (repeatable)")
    p = command("stats", cmd_stats, "per queue: done, failed, throughput, wait and run "
                "time percentiles, error rate (from the events)")
    p.add_argument("--since", help="window start (ISO-8601, or ago such as 1h; default: "
                                       "the first event)")
    p.add_argument("--until", help="window end (ISO-8601, or ago; default: the last event)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p = command("export", cmd_export, "the ledger's events as JSON lines (lossless)")
    p.add_argument("--to", help="a new file (default: standard output)")
    p = command("import", cmd_import, "load exported JSON lines into a new ledger (--db)")
    p.add_argument("source", help="the exported file, or - for standard input")
    p = command("verify", cmd_verify, "check the file, the hash chain, the append-only "
                "rule, and that replaying the events gives the stored state (exit 0 all "
                "checked, 1 a check failed, 4 archived events not checked)")
    p.add_argument("--expect-head", help="the head hash printed by an earlier verify: "
                   "catches a ledger rewritten or cut short before it")
    p.add_argument("--archive", action="append", metavar="FILE",
                   help="an archive file to check the archived events too (repeatable)")
    p = command("archive", cmd_archive, "move the events of jobs deleted before a time "
                "into a compressed file, out of the ledger (the chain stays verifiable)")
    p.add_argument("--before", required=True,
                   help="jobs deleted at or before (ISO-8601, or ago such as 7d)")
    p.add_argument("--to", required=True, help="the new archive file (.jsonl.gz)")
    command("definitions", cmd_definitions,
            "deployed job definitions, and when repeating ones run next")
    for name, run, text in (
            ("retry", cmd_retry, "run a failed, expired or cancelled job again, as a new job"),
            ("cancel", cmd_cancel, "cancel a pending or running job"),
            ("delete", cmd_delete, "remove a job that is not running from the current state"),
            ("run-now", cmd_run_now, "make a pending job that waits for a later time due now")):
        p = command(name, run, text)
        p.add_argument("job_id", help="a job id, its short form, or a unique prefix")
        p.add_argument("--reason", help="recorded in the event")
        p.add_argument("--busy-timeout", type=duration, default=10.0, metavar="SECONDS",
                       help="how long to wait for another process's write lock (default 10)")
    command("subscribers", cmd_subscribers,
            "durable event handlers: where each stands and how far behind it is")
    p = command("schema", cmd_schema, "print the schema SQL")
    p.add_argument("--engine", choices=("sqlite", "postgresql"),
                   help="whose schema (default: the engine of --db, else sqlite)")
    command("migrate", cmd_migrate, "create or upgrade the schema of a ledger file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The CLI is an application, so it may configure logging, to stderr: info for a worker,
    # warnings for the reading commands, errors only for the demo (its failures are on
    # purpose and shown in its output).
    level = {"demo": logging.ERROR, "worker": logging.INFO}.get(args.command, logging.WARNING)
    _log_to_stderr(level)
    try:
        code: int = args.run(args)
        return code
    except EvqError as exc:
        _say_error(exc)
        return exit_code(exc)
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:  # a file named on the command line: missing, unreadable, ...
        print(f"evq: {audit.printable(_os_error(exc))}", file=sys.stderr)
        return EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # a driver error no command mapped: typed all the same
        error = _driver_error(args, exc)
        if error is None:
            raise
        _say_error(error)
        return exit_code(error)


def _driver_error(args: argparse.Namespace, exc: Exception) -> EvqError | None:
    """The typed error for a storage driver's error that escaped a command (None: `exc`
    is something else, a bug to show with its traceback)."""
    try:
        ledger = open_ledger(getattr(args, "db", None) or os.environ.get("EVQ_DB") or "?")
    except EvqError:
        return None
    return ledger.typed_error(exc)


def _say_error(exc: Exception) -> None:
    """The message on stderr. It may quote what the ledger or the caller holds: escaped,
    line by line."""
    for number, line in enumerate(str(exc).split("\n")):
        print(("evq: " if number == 0 else "") + audit.printable(line), file=sys.stderr)


def _os_error(exc: OSError) -> str:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename else reason


EXIT_CODES = __doc__[__doc__.index("Exit codes"):].rstrip()


if __name__ == "__main__":
    raise SystemExit(main())
