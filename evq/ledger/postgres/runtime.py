"""The runtime side of the PostgreSQL engine: the process's group-committing writer and
its async reader. Every write and read the runtime makes is the SQLite engine's own (the
same operations and named statements, see dialect.py); what differs is how a process
holds the server: a writer thread with its own connection, and an async connection for
reads that connects again after the server went away (a read that finds its idle
connection ended by the server is redone at once on a new one)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import psycopg

from ...clock import Clock
from ...errors import ContextClosed
from ..interface import OnCommit
from ..sqlite.runtime import RuntimeSide
from . import connection, failures
from .base import PgBase
from .dialect import translate
from .writer import Writer


class PgRuntime(RuntimeSide, PgBase):
    """The writer and reader one process holds while its runtime is open."""

    _writer: Writer | None = None  # type: ignore[assignment]
    _reader: psycopg.AsyncConnection[Any] | None = None  # type: ignore[assignment]
    _reading: asyncio.Lock | None = None

    async def open(self, clock: Clock, on_commit: OnCommit) -> None:
        if self._writer is not None:
            return
        await asyncio.to_thread(connection.migrate, self.target)
        writer = Writer(self.target, clock, on_commit, self.busy_timeout_ms)
        try:
            await writer.open()
            self._writer = writer
            self._reader = await connection.connect_async(self.target, "reading",
                                                          self.busy_timeout_ms)
            self._reading = asyncio.Lock()
        except BaseException:
            self._writer = None
            with contextlib.suppress(Exception):
                await writer.close()
            raise

    async def close(self) -> None:
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        await writer.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(psycopg.Error):
                await reader.close()

    @property
    def writer(self) -> Writer:  # type: ignore[override]
        if self._writer is None:
            raise ContextClosed(
                "the evq context is not open: use `async with Context(url) as ctx:`")
        return self._writer

    async def _read(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        if self._writer is None or self._reading is None:
            raise ContextClosed("the evq context is not open")
        async with self._reading:
            while True:
                reader = self._reader
                fresh = reader is None or reader.closed
                if reader is None or reader.closed:
                    reader = self._reader = await connection.connect_async(
                        self.target, "reading", self.busy_timeout_ms)
                try:
                    cursor = await reader.execute(translate(query), tuple(params))
                    return await cursor.fetchall()
                except psycopg.Error as exc:
                    gone = failures.is_disconnect(exc)
                    if gone:
                        self._reader = None
                        with contextlib.suppress(psycopg.Error):
                            await reader.close()
                    # A session the server ended while it sat idle (a restart,
                    # pg_terminate_backend) is found dead only by the next statement: a
                    # read is safe to redo, so it is, once, on a new connection.
                    if not gone or fresh:
                        raise failures.ledger_error(exc, self.target.shown,
                                                    "reading") from None
