"""evq: an embedded asyncio job queue whose ledger is one SQLite file.

Every job transition is an event appended to an append-only log in the same transaction
that updates the job's current state; handlers, the CLI and replay all read that log.
"""

from .admin import migrate
from .clock import Clock, FakeClock, SystemClock
from .context import Context
from .durable import SubscriberState, advance_cursor
from .enqueueing import EnqueueRequest
from .errors import (
    CallbackError,
    ContextClosed,
    CursorLost,
    DuplicateJob,
    EvqError,
    FlowError,
    InvalidInput,
    InvalidName,
    InvalidPayload,
    InvalidTime,
    JobRejected,
    JobStateConflict,
    LeaseLost,
    LedgerCorrupt,
    LedgerError,
    LedgerFull,
    LedgerIOError,
    LedgerLocked,
    LedgerNotFound,
    LedgerReadOnly,
    LedgerSchemaError,
    LedgerUnavailable,
    OutcomeAlreadySet,
    PayloadTooLarge,
    UnknownJob,
    UnrecoverableError,
)
from .events import Event, EventKind
from .flows import FlowJob, FlowTree
from .jobs import Child, Job, JobDefinition, JobRecord, JobState
from .ledger import schema_sql
from .ledger.records import FlowNode
from .orchestrator import Orchestrator
from .producer import SyncProducer
from .queues import Cleanup, Queue
from .retry import Exponential, Fixed
from .signals import serve
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "advance_cursor", "CallbackError", "Child", "Cleanup", "Clock", "Context", "ContextClosed",
    "CursorLost", "DuplicateJob", "EnqueueRequest", "Event", "EventKind", "EvqError",
    "Exponential", "FakeClock", "Fixed", "FlowError", "FlowJob", "FlowNode", "FlowTree",
    "InvalidInput", "InvalidName", "InvalidPayload", "InvalidTime", "Job", "JobDefinition",
    "JobRecord", "JobRejected", "JobState", "JobStateConflict", "LeaseLost", "LedgerCorrupt",
    "LedgerError", "LedgerFull", "LedgerIOError", "LedgerLocked", "LedgerNotFound",
    "LedgerReadOnly", "LedgerSchemaError", "LedgerUnavailable", "migrate", "Orchestrator",
    "OutcomeAlreadySet", "PayloadTooLarge", "Queue", "schema_sql", "serve", "SubscriberState",
    "SyncProducer", "SystemClock", "UnknownJob", "UnrecoverableError", "Worker", "__version__",
]
