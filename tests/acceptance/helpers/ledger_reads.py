"""What tests with real processes use to look at the ledger file from outside: a plain
query, and a bounded wait until the file shows what a test waits for (another process
commits it, so there is no in-process event to wait on)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path


def ledger(db: Path, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(query, params).fetchall()


async def poll(condition: Callable[[], object], seconds: float) -> None:
    """Until `condition()` holds; fails the test after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
