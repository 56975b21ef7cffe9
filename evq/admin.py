"""Operator actions from the command line (migrate a ledger; retry, cancel, delete a job),
written through the same ledger operations as the library, in one transaction each. Each
waits at most the ledger's busy timeout for another connection's lock, and raises a typed
error if the ledger cannot be written (locked, read-only, full, ...)."""

from __future__ import annotations

from pathlib import Path

from . import codec
from .enqueueing import new_job_id
from .files import FILE_MODE
from .ledger import Ledger, open_ledger
from .ledger.records import Stopped

BUSY_TIMEOUT_MS = 10_000


def _ledger(ledger: Ledger | str | Path, busy_timeout_ms: int) -> Ledger:
    """A Ledger as given, or the ledger file at a path, waiting `busy_timeout_ms`."""
    if isinstance(ledger, str | Path):
        return open_ledger(ledger, busy_timeout=busy_timeout_ms / 1000)
    return ledger


def migrate(url_or_path: str | Path, file_mode: int = FILE_MODE) -> tuple[int, int]:
    """Create or upgrade a ledger's schema; returns (version before, version now). A
    ledger file created here gets `file_mode`."""
    return open_ledger(url_or_path, file_mode=file_mode).migrate()


def retry(ledger: Ledger | str | Path, job_id: str, reason: str | None,
          busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> str:
    """Enqueue a job that ended badly again, as a new job; returns its id. (A Ledger
    given keeps its own busy timeout; `busy_timeout_ms` is for a path.)"""
    return _ledger(ledger, busy_timeout_ms).retry_job(job_id, new_job_id(), reason)


def cancel(ledger: Ledger | str | Path, job_id: str, reason: str | None,
           busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> list[Stopped]:
    """Cancel a job that has not ended (first in the list), and its flow's descendants
    that had not."""
    return _ledger(ledger, busy_timeout_ms).cancel_job(job_id, reason)


def run_now(ledger: Ledger | str | Path, job_id: str, reason: str | None,
            busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> float:
    """Make a pending job that waits for a later time due now (a `run_now` event);
    returns its new run_at (a job already due keeps its own)."""
    return _ledger(ledger, busy_timeout_ms).run_now_job(job_id, reason)


def delete(ledger: Ledger | str | Path, job_id: str, reason: str | None,
           busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> list[Stopped]:
    """Remove a job that is not running from the current state (its events stay); the
    list names the flow descendants cancelled along with it."""
    return _ledger(ledger, busy_timeout_ms).delete_job(job_id, reason)


def pause(ledger: Ledger | str | Path, queue: str, paused: bool, reason: str | None,
          busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
    """Pause a queue (its jobs are not claimed until it is resumed), or resume it."""
    codec.check_name(queue, "queue")
    _ledger(ledger, busy_timeout_ms).pause_queue(queue, paused, reason)
