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


class CallbackError(EvqError):
    """A function the application gave evq (on_before_add, a group function, a backoff,
    ...) raised or returned something evq cannot use. The message names the function
    and the job; the original exception, if any, is the __cause__."""


class CursorLost(EvqError):
    """A durable handler's consumer no longer holds its name (another consumer took it
    over): its cursor move was refused, and the caller's transaction rolled back."""


class LedgerError(EvqError):
    """The ledger cannot be used as asked. Its subclasses say why; each message names the
    file, what is wrong and what to do."""


class ContextClosed(LedgerError):
    """The context was used after it was closed, or before it was opened."""


class LedgerNotFound(LedgerError):
    """No ledger at that path (or its directory does not exist)."""


class LedgerSchemaError(LedgerError):
    """The file is a database but not an evq ledger this evq can use: no evq schema, a
    table missing, or a schema version newer (or older) than this evq's."""


class LedgerCorrupt(LedgerError):
    """The file is damaged, or is not a SQLite database at all."""


class LedgerUnavailable(LedgerError):
    """The ledger cannot be written just now; the same write may succeed later. Nothing
    was written."""


class LedgerFull(LedgerUnavailable):
    """The disk (or a size limit) is full."""


class LedgerReadOnly(LedgerUnavailable):
    """The file, its directory or the mount is read-only for this process."""


class LedgerLocked(LedgerUnavailable):
    """Another connection held the write lock for longer than `busy_timeout`."""


class LedgerIOError(LedgerUnavailable):
    """The operating system reported an I/O error on the file."""


class FlowError(EvqError):
    """A flow cannot be built as asked: a child that does not exist, has ended, already
    belongs to another parent, or would make the tree a cycle."""
