"""The orchestrator: housekeeping that one process at a time should do. Any number may
run, in any processes; they elect a leader through the ledger (a lease that the leader
renews each round), and when the leader dies its lease runs out and another takes over.

Each round the leader: fires due repeating jobs (`schedule`, `schedule_orphan`),
rescues jobs whose lease ran out (`rescue`), removes old finished jobs per queue cleanup
settings (`delete`), and reports jobs that no live worker can run (`orphan`).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from . import archive as archiving
from . import codec, rescuing
from .awaiting import Later, call_in_loop
from .errors import InvalidInput
from .ledger import records
from .logs import get_logger
from .outcomes import describe_error
from .signals import stop_on_signals

if TYPE_CHECKING:
    from .runtime import Runtime

ROLE = "orchestrator"
_FINISHED_OK: tuple[str, ...] = ("succeeded",)
_FINISHED_BAD: tuple[str, ...] = ("failed", "expired", "cancelled")


@attrs.frozen
class Round:
    """What one round did (all zero/empty when this orchestrator did not lead)."""

    leader: bool
    fired: list[records.Fired] = attrs.field(factory=list)
    rescued: int = 0
    cleaned: int = 0
    orphans: list[str] = attrs.field(factory=list)
    archived: int = 0


class Orchestrator:
    """Runs the housekeeping rounds. interval: seconds between rounds (cuckmq's
    jobSchedulePollSecs). leader_lease: how long a silent leader keeps the lead.
    orphan_after: how long a due job may wait with no live worker able to run it before
    it is reported. worker_ttl: how recently a worker must have been seen to count."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        name: str | None = None,
        interval: float = 1.0,
        leader_lease: float = 10.0,
        orphan_after: float = 60.0,
        worker_ttl: float = 30.0,
        batch: int = 500,
        archive_to: str | Path | None = None,
        archive_after: float = 7 * 86400,
        archive_every: float = 3600.0,
    ) -> None:
        from .identity import unique_name

        self.runtime = runtime
        self.name = codec.check_name(name or f"orchestrator-{unique_name()}",
                                     "orchestrator")
        self.interval = codec.check_delay(interval, "interval")
        self.leader_lease = codec.check_delay(leader_lease, "leader_lease")
        self.orphan_after = codec.check_delay(orphan_after, "orphan_after")
        self.worker_ttl = codec.check_delay(worker_ttl, "worker_ttl")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InvalidInput(f"batch must be an integer >= 1, got {batch!r}")
        self.batch = batch
        self.archive_to = None if archive_to is None else Path(archive_to)
        self.archive_after = codec.check_delay(archive_after, "archive_after")
        self.archive_every = codec.check_delay(archive_every, "archive_every")
        self._next_archive = float("-inf")
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finished: asyncio.Future[None] | None = None
        self._log = get_logger("evq.orchestrator").bind(orchestrator=self.name)

    def stop(self) -> Later:
        """Ask the orchestrator to stop (from any thread); `await orchestrator.stop()`
        also waits until `run()` has finished and handed the lead over."""
        call_in_loop(self._loop, self._stop.set)
        return Later(self._until_stopped)

    async def _until_stopped(self) -> None:
        finished = self._finished
        if finished is not None and not finished.done():
            await asyncio.shield(finished)

    async def run(self, *, handle_signals: bool = False) -> None:
        """Deploy this process's definitions, then run rounds until stopped (with
        handle_signals, also by SIGINT or SIGTERM, which stop every worker and
        orchestrator of this loop that asked too); on a clean stop, hand the lead over
        at once."""
        self._stop.clear()
        self._loop = asyncio.get_running_loop()
        self._finished = finished = self._loop.create_future()
        forget_signals = stop_on_signals(self.stop) if handle_signals else None
        try:
            await self._serve()
        finally:
            if forget_signals is not None:
                forget_signals()
            finished.set_result(None)

    async def _serve(self) -> None:
        await self.runtime.deploy()
        self._log.info("evq.orchestrator_started")
        try:
            while not self._stop.is_set():
                try:
                    await self.tick()
                except Exception as exc:  # a failed round must not end housekeeping
                    self._log.error("evq.orchestrator_round_failed", error=repr(exc),
                                    exc_info=True)
                sleeper = asyncio.ensure_future(self.runtime.clock.sleep(self.interval))
                stopper = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait([sleeper, stopper], return_when=asyncio.FIRST_COMPLETED)
                sleeper.cancel()
                stopper.cancel()
        finally:
            with contextlib.suppress(Exception):
                await self.runtime.ledger.step_down(ROLE, self.name)
            self._log.info("evq.orchestrator_stopped")

    async def tick(self) -> Round:
        """One round: lead if possible, and if leading do the housekeeping."""
        runtime = self.runtime
        leads = await runtime.ledger.lead(ROLE, self.name, self.leader_lease)
        if not leads:
            return Round(False)
        local = self._schedules()
        fired = await runtime.ledger.fire_schedules(local, {n: self._make_job(n) for n in local})
        for item in fired:
            if item.kind == "schedule_failed":
                self._log.error("evq.schedule_failed", job=item.name, due_at=item.due_at)
            elif item.kind != "registered":
                self._log.info(f"evq.{item.kind}", job=item.name, due_at=item.due_at,
                               job_id=item.job_id, missed=item.missed)
        rescued = await rescuing.rescue_expired(runtime, self.name)
        cleaned = await runtime.ledger.cleanup(self._cleanup_rules(), self.batch)
        orphans = await runtime.ledger.report_orphans(
            worker_ttl=self.worker_ttl, after=self.orphan_after,
            limit=self.batch)
        for job_id in orphans:
            self._log.warning("evq.orphan", job_id=job_id)
        archived = await self._archive()
        return Round(True, fired, rescued, cleaned, orphans, archived)

    async def _archive(self) -> int:
        """Move the events of jobs deleted `archive_after` ago into a file in
        `archive_to`, every `archive_every` seconds (see archive.py)."""
        now = self.runtime.clock.now()
        if self.archive_to is None or now < self._next_archive:
            return 0
        self._next_archive = now + self.archive_every
        self.archive_to.mkdir(parents=True, exist_ok=True)
        target = self.archive_to / f"evq-archive-{int(now)}-{self.name}.jsonl.gz"
        done = await asyncio.to_thread(archiving.archive, self.runtime.ledger,
                                       now - self.archive_after, target, now)
        if done.events:
            self._log.info("evq.archived", events=done.events, jobs=done.jobs,
                           file=str(done.file), sha256=done.sha256)
        return done.events

    def _schedules(self) -> dict[str, records.LocalSchedule]:
        return {name: records.LocalSchedule(d.queue, d.schedule)
                for name, d in self.runtime.registry.definitions.items()
                if d.schedule is not None}

    def _make_job(self, name: str) -> records.NewJob | dict[str, Any]:
        """The job a schedule enqueues if it fires this round, prepared here, outside the
        transaction; or, if preparing it fails (a group function that raises, say), the
        error its `schedule` event records."""
        try:
            return self.runtime.registry.prepare(name, {})
        except Exception as exc:
            return describe_error(exc)

    def _cleanup_rules(self) -> list[records.CleanupRule]:
        rules: list[records.CleanupRule] = []
        for name, queue in self.runtime.registry.queues.items():
            if queue.cleanup is None:
                continue
            if queue.cleanup.completed_after is not None:
                rules.append(records.CleanupRule(name, _FINISHED_OK,
                                                 queue.cleanup.completed_after))
            if queue.cleanup.failed_after is not None:
                rules.append(records.CleanupRule(name, _FINISHED_BAD,
                                                 queue.cleanup.failed_after))
        return rules
