"""The exception tree: every failure a user can cause has its own type.

Everything evq raises on purpose derives from `EvqError`. Errors about bad input also
derive from `ValueError`, so generic code that catches ValueError keeps working.
"""

from __future__ import annotations


class EvqError(Exception):
    """Base class of every error evq raises on purpose."""


class InvalidInput(EvqError, ValueError):
    """Something the caller passed was refused before anything was written."""


class InvalidName(InvalidInput):
    """A queue, job or worker name is empty, too long or uses characters outside the rule."""


class InvalidPayload(InvalidInput):
    """A payload or result cannot be stored as JSON exactly as given."""


class PayloadTooLarge(InvalidPayload):
    """A payload or result is bigger than the configured limit."""


class InvalidTime(InvalidInput):
    """A run_at that is not a time, or a delay that is negative or not finite."""


class UnknownJob(EvqError, LookupError):
    """No job definition, or no job in the ledger, has that name or id."""


class DuplicateJob(EvqError):
    """A job definition with this name is already registered on the context."""


class JobStateConflict(EvqError):
    """The job is not in a state that allows this transition (e.g. cancel a finished job)."""


class LeaseLost(JobStateConflict):
    """This worker no longer holds the job's attempt: its write was fenced and refused.

    Happens when the lease expired and the job was rescued, or the job was cancelled.
    The other holder's outcome stands; nothing was written for this one.
    """


class OutcomeAlreadySet(EvqError):
    """A handler chose two outcomes (e.g. job.completed() then job.failed())."""


class JobRejected(EvqError):
    """The job definition's on_before_add refused the job: it was not added (a `reject`
    event records the refusal)."""

    def __init__(self, message: str, reasons: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reasons = reasons or {}


class UnrecoverableError(Exception):
    """Raise from a handler to fail the job at once, without using its remaining attempts."""


class LedgerError(EvqError):
    """The ledger file cannot be used: wrong schema version, not an evq ledger, closed."""


class ContextClosed(LedgerError):
    """The context was used after it was closed, or before it was opened."""


class FlowError(EvqError):
    """A flow cannot be built as asked: a child that does not exist, has ended, already
    belongs to another parent, or would make the tree a cycle."""
