"""The runtime side of the SQLite engine: the process's one group-committing writer and
its async reader, and every write the runtime makes (enqueue, claim, report, heartbeat,
cancel, rescue, the leader's services), each one transaction built from the operations
in ops.py, maintenance.py, trees.py and rescues.py."""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ...clock import Clock
from ...errors import ContextClosed, InvalidInput, LeaseLost
from ...events import Event, event_from_row
from ...jobs import JobRecord
from ...outcomes import Planned
from .. import records
from ..interface import OnCommit
from . import connection, maintenance, ops, rescues, sql, trees
from .base import EngineBase
from .failures import ledger_error
from .tx import Tx
from .writer import Writer

if TYPE_CHECKING:
    import aiosqlite


class RuntimeSide(EngineBase):
    """The writer and reader one process holds while its runtime is open."""

    _writer: Writer | None = None
    _reader: aiosqlite.Connection | None = None

    # --- lifecycle -----------------------------------------------------------------------
    async def open(self, clock: Clock, on_commit: OnCommit) -> None:
        if self._writer is not None:
            return
        connection.create_file(self.path, self.file_mode)
        writer = Writer(self.path, clock, self.durability, on_commit, self.busy_timeout_ms)
        try:
            await writer.open()
            self._writer = writer
            self._reader = await connection.open_reader(self.path, self.busy_timeout_ms)
        except BaseException:
            await self._release(writer)
            raise

    async def _release(self, writer: Writer) -> None:
        """Undo a failed open: close whatever it opened (its threads would otherwise keep
        the process from exiting)."""
        self._writer = None
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader.close()
            self._reader = None
        with contextlib.suppress(Exception):
            await writer.close()

    async def close(self) -> None:
        if self._writer is None:
            return
        await self._writer.close()
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        self._writer = None

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    async def flush(self) -> None:
        await self.writer.run(_nothing)

    @property
    def writer(self) -> Writer:
        if self._writer is None:
            raise ContextClosed(
                "the evq context is not open: use `async with Context(path) as ctx:`")
        return self._writer

    # --- enqueue and other transitions ------------------------------------------------------
    async def enqueue(self, jobs: Sequence[records.NewJob]) -> list[str]:
        return await self.writer.run(functools.partial(ops.enqueue, jobs=jobs),
                                     weight=len(jobs))

    async def enqueue_stream(self, chunks: records.JobFeed) -> list[str]:
        stream = ops.EnqueueStream(chunks)
        return await self.writer.run(stream, weight=1 << 30)

    async def reject(self, jobs: Sequence[records.NewJob], reasons: Mapping[str, str]
                     ) -> None:
        await self.writer.run(functools.partial(ops.reject, jobs=jobs, reasons=reasons))

    async def enqueue_tree(self, root: records.PlannedNode) -> records.FlowNode:
        return await self.writer.run(functools.partial(trees.enqueue_tree, root=root))

    async def add_children(self, parent_id: str, children: Sequence[records.PlannedNode]
                           ) -> list[records.FlowNode]:
        return await self.writer.run(functools.partial(
            trees.add_children, parent_id=parent_id, children=tuple(children)))

    async def cancel(self, job_id: str, reason: str | None) -> list[records.Stopped]:
        ended = await self.writer.run(functools.partial(ops.cancel, job_id=job_id,
                                                        reason=reason))
        return [records.Stopped(job, running) for job, running in ended]

    async def retry(self, job_id: str, new_id: str, reason: str | None) -> str:
        return await self.writer.run(functools.partial(
            ops.retry, job_id=job_id, new_id=new_id, reason=reason))

    async def run_now(self, job_id: str, reason: str | None) -> float:
        return await self.writer.run(functools.partial(ops.run_now, job_id=job_id,
                                                       reason=reason))

    async def delete(self, job_id: str, reason: str | None) -> list[records.Stopped]:
        ended = await self.writer.run(functools.partial(ops.delete, job_id=job_id,
                                                        reason=reason))
        return [records.Stopped(job, running) for job, running in ended]

    async def set_paused(self, queue: str, paused: bool, reason: str | None) -> None:
        await self.writer.run(functools.partial(ops.set_paused, queue=queue, paused=paused,
                                                reason=reason))

    async def deploy(self, definitions: Mapping[str, records.Deployment]) -> list[str]:
        return await self.writer.run(functools.partial(maintenance.deploy,
                                                       definitions=definitions))

    # --- workers -----------------------------------------------------------------------------
    async def announce_worker(self, request: records.Announce) -> records.Announced:
        def op(tx: Tx) -> records.Announced:
            name = maintenance.take_worker_name(
                tx, request.candidates,
                lambda n, holder: request.holder_gone(n, holder, tx.now))
            if name is None and request.chosen:
                holder = maintenance.worker_holder(tx, request.chosen)
                where = f" (process {holder.pid} on {holder.host})" if holder else ""
                raise InvalidInput(
                    f"worker name {request.chosen!r} is held by a live worker{where}: "
                    "two live workers never share a name; give this one another name, or "
                    "stop that one first")
            if name is None:
                raise InvalidInput(f"{len(request.candidates)} live workers already serve "
                                   "these queues on this host; give this one a name")
            request.taking(name)
            maintenance.see_worker(tx, name, request.names)
            released = (ops.release_previous(tx, name, json.dumps(request.restart_queues))
                        if request.restart_queues else [])
            return records.Announced(name, tuple(released), tx.now)
        return await self.writer.run(op)

    async def forget_worker(self, name: str) -> None:
        await self.writer.run(functools.partial(maintenance.forget_worker, name=name))

    async def claim(self, request: records.ClaimRequest) -> records.ClaimResult:
        return await self.writer.run(functools.partial(
            _claim, request=request, queues_json=_json_list(request.queues),
            names_json=_json_list(request.names)))

    async def start_run(self, held: records.Attempt) -> None:
        await self.writer.run(functools.partial(ops.start_run, held=held))

    async def report(self, held: records.Attempt, steps: Sequence[Planned]
                     ) -> list[Planned]:
        return await self.writer.run(functools.partial(ops.report, held=held, planned=steps))

    async def heartbeat(self, beats: Sequence[records.Beat]) -> list[float | None]:
        return await self.writer.run(functools.partial(_heartbeat, beats=beats))

    async def cancelled_among(self, job_ids: Sequence[str]) -> list[str]:
        return await self.writer.run(functools.partial(
            ops.cancelled_among, job_ids_json=json.dumps(sorted(job_ids))))

    async def take_hook(self, names: Sequence[str], worker: str, lease: float
                        ) -> records.HookTaken:
        row, next_at = await self.writer.run(functools.partial(
            ops.take_hook, names_json=json.dumps(sorted(names)), worker=worker, lease=lease))
        return records.HookTaken(None if row is None else JobRecord.from_row(row), next_at)

    async def renew_hook(self, held: records.Attempt, lease: float) -> None:
        await self.writer.run(functools.partial(
            ops.renew_hook, job_id=held.job_id, queue=held.queue, name=held.name,
            attempt=held.attempt, worker=held.worker, lease=lease))

    async def finish_hook(self, held: records.Attempt, error: dict[str, Any] | None
                          ) -> None:
        await self.writer.run(functools.partial(
            ops.finish_hook, job_id=held.job_id, queue=held.queue, name=held.name,
            attempt=held.attempt, worker=held.worker, error=error))

    # --- rescue --------------------------------------------------------------------------------
    async def expired_leases(self, limit: int = 500) -> records.ExpiredLeases:
        leases, kept_until = await self.writer.run(functools.partial(
            rescues.expired_leases, limit=limit))
        return records.ExpiredLeases(leases, kept_until)

    async def rescue(self, rescues_: Sequence[records.Rescue], rescuer: str) -> int:
        return await self.writer.run(functools.partial(
            rescues.rescue, rescues=rescues_, rescuer=rescuer))

    # --- the orchestrator's leader ----------------------------------------------------------
    async def lead(self, role: str, holder: str, lease: float) -> bool:
        return await self.writer.run(functools.partial(
            maintenance.lead, role=role, holder=holder, lease=lease))

    async def step_down(self, role: str, holder: str) -> None:
        await self.writer.run(functools.partial(maintenance.step_down, role=role,
                                                holder=holder))

    async def fire_schedules(self, local: Mapping[str, records.LocalSchedule],
                             jobs: Mapping[str, records.NewJob | dict[str, Any]]
                             ) -> list[records.Fired]:
        return await self.writer.run(functools.partial(
            maintenance.fire_schedules, local=local, jobs=jobs))

    async def cleanup(self, rules: Sequence[records.CleanupRule], limit: int) -> int:
        return await self.writer.run(functools.partial(maintenance.cleanup, rules=rules,
                                                       limit=limit))

    async def report_orphans(self, worker_ttl: float, after: float, limit: int
                             ) -> list[str]:
        return await self.writer.run(functools.partial(
            maintenance.report_orphans, worker_ttl=worker_ttl, after=after, limit=limit))

    # --- the runtime's reads ------------------------------------------------------------------
    async def _read(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        if self._reader is None:
            raise ContextClosed("the evq context is not open")
        try:
            cursor = await self._reader.execute(query, tuple(params))
            rows = list(await cursor.fetchall())
            await cursor.close()
        except sqlite3.Error as exc:
            raise ledger_error(exc, self.path, "reading", self.busy_timeout) from exc
        return rows

    async def head(self) -> int:
        return int((await self._read(sql.HEAD_POSITION))[0][0])

    async def get_job(self, job_id: str) -> JobRecord | None:
        rows = await self._read(sql.GET_JOB, (job_id,))
        return JobRecord.from_row(tuple(rows[0])) if rows else None

    async def jobs(self) -> list[JobRecord]:
        return [JobRecord.from_row(tuple(r)) for r in await self._read(sql.LIST_JOBS)]

    async def history(self, job_id: str) -> list[Event]:
        rows = await self._read(sql.EVENTS_FOR_JOB, (job_id,))
        return [event_from_row(tuple(r)) for r in rows]

    async def events(self, after: int, limit: int, seals: bool) -> list[Event]:
        query = sql.EVENTS_AFTER if seals else sql.EVENTS_AFTER_UNSEALED
        return [event_from_row(tuple(r)) for r in await self._read(query, (after, limit))]

    async def counts(self) -> dict[str, int]:
        return {state: n for state, n in await self._read(sql.COUNT_JOBS_BY_STATE)}


def _claim(tx: Tx, *, request: records.ClaimRequest, queues_json: str, names_json: str
           ) -> records.ClaimResult:
    """Claim due jobs; also find the leases that ran out (rescued after this commit, see
    evq/rescuing.py)."""
    expired, kept_until = rescues.expired_leases(tx)
    if request.see_names is not None:
        maintenance.see_worker(tx, request.worker, request.see_names)
    lease_for = request.lease_for
    claimed = ops.claim(tx, request.queues, names_json, request.limit, request.worker,
                        lease_for.__getitem__, request.queue_limits, request.run_later)
    if len(claimed) == request.limit:
        return records.ClaimResult(claimed, None, expired, tx.now)
    # Due jobs that could not be taken (paused queue, limit reached, group busy) wait for a
    # commit that frees them, which wakes the worker; only future times count (and when
    # leases a stall keeps from rescue may be rescued).
    candidates = [t for t in (ops.next_due(tx, queues_json, names_json),
                              ops.next_lease_expiry(tx), kept_until)
                  if t is not None and t > tx.now]
    return records.ClaimResult(claimed, min(candidates) if candidates else None, expired,
                               tx.now)


@functools.lru_cache(maxsize=64)
def _json_list(names: tuple[str, ...]) -> str:
    """A claim's queues or job names as the JSON its statements take (they recur)."""
    return json.dumps(names)


def _nothing(tx: Tx) -> None:
    return None


def _heartbeat(tx: Tx, *, beats: Sequence[records.Beat]) -> list[float | None]:
    renewed: list[float | None] = []
    for beat in beats:
        lease_until = tx.now + beat.lease
        # Read first: on PostgreSQL a refused append aborts the whole transaction, and
        # one lost attempt must not cost the others their renewal.
        if not ops.holds(tx, beat.held):
            renewed.append(None)
            continue
        try:
            ops.report(tx, beat.held, [Planned("heartbeat", {"lease_until": lease_until})])
        except LeaseLost:
            renewed.append(None)
        else:
            renewed.append(lease_until)
    return renewed
