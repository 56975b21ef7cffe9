"""Operator actions from the command line (retry, cancel, delete a job), written through
the same ledger operations as the library, in one transaction each. Each waits at most
`busy_timeout_ms` for another connection's lock, and raises a typed error if the ledger
cannot be written (locked, read-only, full, ...)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .enqueueing import new_job_id
from .ledger.sqlite import connection, ops, stalls
from .ledger.sqlite.tx import Tx

T = TypeVar("T")
BUSY_TIMEOUT_MS = 10_000


def _write(path: str | Path, op: Callable[[Tx], T], busy_timeout_ms: int) -> T:
    asked = time.monotonic()
    with connection.write_transaction(path, busy_timeout_ms) as conn:
        tx = Tx.locked(conn, time.time())  # read under the lock (see Tx.locked)
        if time.monotonic() - asked >= stalls.STALL:
            stalls.record(tx, time.monotonic() - asked)
        result = op(tx)
        tx.seal()
    return result


def retry(path: str | Path, job_id: str, reason: str | None,
          busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> str:
    return _write(path, lambda tx: ops.retry(tx, job_id, new_job_id(), reason), busy_timeout_ms)


def cancel(path: str | Path, job_id: str, reason: str | None,
           busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> list[tuple[str, bool]]:
    return _write(path, lambda tx: ops.cancel(tx, job_id, reason), busy_timeout_ms)


def delete(path: str | Path, job_id: str, reason: str | None,
           busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> list[tuple[str, bool]]:
    return _write(path, lambda tx: ops.delete(tx, job_id, reason), busy_timeout_ms)
