"""Noticing commits made by other connections to the ledger file: other processes, or a
caller's own transactions. `PRAGMA data_version` changes when another connection commits;
reading it costs microseconds, so polling it every few milliseconds is cheap."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

from .ledger.sqlite import connection, sql
from .logs import get_logger

_log = get_logger("evq.watch")


class CommitWatcher:
    """Calls `on_change()` within `interval` seconds of another connection's commit."""

    def __init__(self, path: str | Path, interval: float, on_change: Callable[[], None]) -> None:
        self._path = path
        self._interval = interval
        self._on_change = on_change
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._conn = connection.connect(self._path, busy_timeout_ms=1000)
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="evq-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _loop(self) -> None:
        conn = self._conn
        assert conn is not None
        seen = conn.execute(sql.DATA_VERSION).fetchone()[0]
        while True:
            await asyncio.sleep(self._interval)  # real time: it watches the file, not jobs
            try:
                version = conn.execute(sql.DATA_VERSION).fetchone()[0]
            except sqlite3.Error as exc:
                _log.warning("evq.watch_failed", error=str(exc))
                continue
            if version != seen:
                seen = version
                self._on_change()
