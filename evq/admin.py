"""Operator actions from the command line (retry, cancel, delete a job), written through
the same ledger operations as the library, in one transaction each."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .enqueueing import new_job_id
from .ledger import connection, ops, stalls
from .ledger.tx import Tx

T = TypeVar("T")


def _write(path: str | Path, op: Callable[[Tx], T]) -> T:
    asked = time.monotonic()
    with connection.write_transaction(path) as conn:
        tx = Tx.locked(conn, time.time())  # read under the lock (see Tx.locked)
        if time.monotonic() - asked >= stalls.STALL:
            stalls.record(tx, time.monotonic() - asked)
        result = op(tx)
        tx.seal()
    return result


def retry(path: str | Path, job_id: str, reason: str | None) -> str:
    return _write(path, lambda tx: ops.retry(tx, job_id, new_job_id(), reason))


def cancel(path: str | Path, job_id: str, reason: str | None) -> list[tuple[str, bool]]:
    return _write(path, lambda tx: ops.cancel(tx, job_id, reason))


def delete(path: str | Path, job_id: str, reason: str | None) -> list[tuple[str, bool]]:
    return _write(path, lambda tx: ops.delete(tx, job_id, reason))
