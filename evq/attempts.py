"""One attempt's user code, outside any transaction: okay_to_run, then the handler (a
sync one in the handler threads, with its timeout), and what the attempt comes to as
steps for the ledger: success with its encoded result, requeue, fail, or an error and
what follows it (retry after the backoff, or expiry)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import codec
from .errors import CallbackError, InvalidPayload, LeaseLost, UnrecoverableError
from .jobs import Job, JobDefinition
from .ledger import records
from .outcomes import Planned, RetryPolicy, after_fail, after_failure, callable_name, describe_error

if TYPE_CHECKING:
    from .runtime import Runtime

Plan = list[Planned]  # an attempt's outcome, times relative to the commit (due_in)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _ran_past(timeout: float | None) -> str:
    return f"the handler ran past its timeout of {timeout} s"


async def outcome(runtime: Runtime, worker: str, definition: JobDefinition[Any], job: Job,
                  log: Any) -> Plan:
    """Run one attempt's user code (okay_to_run, then the handler) and decide what it
    comes to, as steps for the ledger."""
    policy = definition.retry_policy
    try:
        payload = codec.decode_as(definition.payload_type, job.payload)
        job.payload = payload
        if definition.okay_to_run is not None:
            not_now = await _okay_to_run(runtime, worker, definition, payload, job, log)
            if not_now is not None:
                return not_now
        result = await _invoke(runtime, definition, (payload, job), job, log)
    except UnrecoverableError as exc:
        log.warning("evq.job_failed", error=repr(exc))
        return _failed(job, describe_error(exc), policy, log, retryable=False)
    except (TimeoutError, Exception) as exc:
        log.warning("evq.job_error", error=repr(exc))
        return _failed(job, describe_error(exc), policy, log)
    chosen = job.outcome or Planned("success", {"result": result})
    return _plan_outcome(runtime, job, chosen, policy, log, definition.failure_delay)


def _failed(job: Job, error: dict[str, Any], policy: RetryPolicy, log: Any, *,
            retryable: bool = True) -> Plan:
    """The plan for a failed attempt, decided here, outside the write transaction:
    the job's backoff is the application's code."""
    steps = after_failure("error", error, job.errors, policy, job=f"{job.id} ({job.name})",
                          retryable=retryable)
    if steps[-1].data.get("reason") == "backoff_failed":
        log.error("evq.backoff_failed", error=steps[-1].data["error"]["message"])
    return steps


async def _invoke(runtime: Runtime, definition: JobDefinition[Any], args: tuple[Any, ...],
                  job: Job, log: Any) -> Any:
    """Run the handler. With a timeout, an async handler is cancelled once it has run
    for `timeout` seconds. A sync handler's thread cannot be stopped: its timeout
    counts from when the thread starts it (a handler still waiting for a thread is not
    timed out), then `job.cancel_requested` is set and the job keeps its slot, group
    and lease until the thread returns. Either way the attempt ends in TimeoutError."""
    handler = definition.handler
    assert handler is not None
    args = args[: definition.handler_arity]
    timeout = definition.timeout
    if definition.is_async:
        if timeout is None:
            return await handler(*args)
        try:
            return await asyncio.wait_for(handler(*args), timeout)
        except TimeoutError:
            raise TimeoutError(_ran_past(timeout)) from None
    loop = asyncio.get_running_loop()
    started: asyncio.Future[None] = loop.create_future()

    def call() -> Any:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
            loop.call_soon_threadsafe(_resolve, started)
        return handler(*args)

    finished = loop.run_in_executor(runtime.sync_executor(), call)
    if timeout is None:
        return await finished
    await asyncio.wait([started, finished], return_when=asyncio.FIRST_COMPLETED)
    try:
        return await asyncio.wait_for(asyncio.shield(finished), timeout)
    except TimeoutError:
        job.cancel_requested = True
        log.warning("evq.job_timed_out", timeout=timeout,
                    note="the handler's thread is told to stop (job.cancel_requested); "
                    "the job keeps its slot and group until it returns")
        with contextlib.suppress(Exception):
            await finished
        raise TimeoutError(_ran_past(timeout)) from None


async def _okay_to_run(runtime: Runtime, worker: str, definition: JobDefinition[Any],
                       payload: Any, job: Job, log: Any) -> Plan | None:
    """Ask okay_to_run. Not now: a `defer` that gives the attempt back (a defer is not
    a run). Yes: the attempt's `run` event, then None (the handler may start)."""
    check = definition.okay_to_run
    assert check is not None
    where = f"okay_to_run {callable_name(check)} of job {job.id} ({job.name})"
    try:
        answer = await _maybe_await(runtime, check, payload, job)
    except Exception as exc:
        raise CallbackError(f"{where} raised {type(exc).__name__}: {exc}; the attempt "
                            "counts as failed. Fix the function") from exc
    if answer is not None and not isinstance(answer, bool):
        raise CallbackError(f"{where} returned {answer!r:.200}; it returns True (or "
                            "None) to run, False to defer. The attempt counts as failed")
    if answer is False:
        delay = definition.requeue_delay
        log.info("evq.job_deferred", delay=delay)
        before = job.attempt - 1
        return [Planned("defer", {"reason": "okay_to_run", "delay": delay,
                                  "attempt_before": before}, due_in=delay)]
    held = records.Attempt(job.id, job.queue, job.name, job.attempt, worker)
    try:
        await runtime.ledger.start_run(held)
    except LeaseLost as exc:  # cancelled or rescued while okay_to_run was asked
        log.warning("evq.lease_lost", error=str(exc))
        return []
    return None


async def _maybe_await(runtime: Runtime, check: Callable[..., Any], *args: Any) -> Any:
    """Call a hook that may be async, or sync (then in a thread, off the loop)."""
    if inspect.iscoroutinefunction(check):
        return await check(*args)
    return await asyncio.get_running_loop().run_in_executor(
        runtime.sync_executor(), functools.partial(check, *args))


def _plan_outcome(runtime: Runtime, job: Job, chosen: Planned, policy: RetryPolicy, log: Any,
                  failure_delay: float | None = None) -> Plan:
    """The plan for the outcome the handler chose: plain data, whatever the result
    holds (a result that cannot be encoded, however it fails, fails the job)."""
    data = dict(chosen.data)
    errors = job.errors
    if chosen.kind == "success":
        try:
            data["result"] = codec.encode(data["result"], "result",
                                          runtime.registry.max_payload_bytes)
        except Exception as exc:
            log.warning("evq.bad_result", error=repr(exc))
            error = describe_error(exc)
            if not isinstance(exc, InvalidPayload):
                error["message"] = (f"the handler's result cannot be stored as JSON: "
                                    f"encoding it raised {type(exc).__name__}: {exc}")
            return _failed(job, error, policy, log, retryable=False)
        log.debug("evq.job_succeeded")
        steps = [Planned("success", data)]
    elif chosen.kind == "requeue":
        delay = data.pop("delay")
        steps = [Planned("requeue", {**data, "run_at": None}, due_in=delay)]
    elif chosen.kind == "fail":
        # With Joystick's requeue_on_failure, a failed attempt comes back after the delay.
        steps = after_fail(data["error"], errors, policy, requeue_after=failure_delay,
                           job=f"{job.id} ({job.name})")
    else:
        steps = [Planned(chosen.kind, data)]
    return steps
