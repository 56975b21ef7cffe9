"""The subscriber side of the SQLite engine: durable cursors (taken, renewed, released
through the process's writer; moved by a handler in its own transaction), where every
cursor stands, and noticing commits that other connections make to the file
(`PRAGMA data_version`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ...errors import ContextClosed, CursorLost, InvalidInput
from ...logs import get_logger
from ..records import CursorLease, SubscriberState
from . import connection, sql
from .base import EngineBase
from .failures import ledger_error
from .tx import Tx

if TYPE_CHECKING:
    import aiosqlite

    from .writer import Writer

T = TypeVar("T")
WATCH_BUSY_TIMEOUT_MS = 1000

_log = get_logger("evq.watch")


class SubscriberSide(EngineBase):
    """Durable cursors and commit watching (see evq.ledger.interface.Ledger)."""

    # Both set by the runtime side while the runtime is open.
    _writer: Writer | None
    _reader: aiosqlite.Connection | None

    # --- durable cursors, written by the process's writer -----------------------------
    async def take_cursor(self, name: str, holder: str, previous: str | None, lease: float,
                          start: int) -> int | None:
        return await self._cursor_write(functools.partial(
            _take, name=name, holder=holder, previous=previous, lease=lease, start=start))

    async def move_cursor(self, name: str, holder: str, position: int, lease: float
                          ) -> bool:
        return await self._cursor_write(functools.partial(
            _renew, name=name, holder=holder, position=position, lease=lease))

    async def release_cursor(self, name: str, holder: str, position: int) -> None:
        await self._cursor_write(functools.partial(
            _release, name=name, holder=holder, position=position))

    async def _cursor_write(self, op: Callable[[Tx], T]) -> T:
        if self._writer is None:
            raise ContextClosed("the evq context is not open: durable handlers need it open")
        return await self._writer.run(op)

    async def cursor_lease(self, name: str) -> CursorLease | None:
        if self._reader is None:
            raise ContextClosed("the evq context is not open: durable handlers need it open")
        try:
            cursor = await self._reader.execute(sql.CURSOR_LEASE, (name,))
            row = await cursor.fetchone()
            await cursor.close()
        except sqlite3.Error as exc:
            raise ledger_error(exc, self.path, "reading", self.busy_timeout) from exc
        return None if row is None else CursorLease(row[0], row[1])

    def cursor_states(self) -> list[SubscriberState]:
        with self.reading() as conn:
            head = int(conn.execute(sql.HEAD_POSITION).fetchone()[0])
            return [SubscriberState(name, position, head, holder, updated)
                    for name, position, holder, _, updated in conn.execute(sql.LIST_CURSORS)]

    # --- a handler moving its cursor in its own transaction -----------------------------
    def advance_cursor_in(self, conn: object, name: str, holder: str, position: int,
                          now: float) -> None:
        if not isinstance(conn, sqlite3.Connection):
            kind = f"{type(conn).__module__}.{type(conn).__qualname__}"
            raise InvalidInput(
                f"advance_cursor takes the plain sqlite3.Connection your handler writes "
                f"its rows with, open on {self.path}, got a {kind}; nothing was written")
        try:
            moved = conn.execute(sql.MOVE_CURSOR_IN_CALLERS_TX,
                                 (position, now, name, holder, position)).rowcount
            if moved == 1:
                return
            row = conn.execute(sql.GET_CURSOR, (name,)).fetchone()
            conn.rollback()
        except sqlite3.Error as exc:
            raise ledger_error(exc, self.path, f"moving the cursor of durable handler "
                                               f"{name!r} in") from exc
        raise CursorLost(_refusal(name, position, holder, row))

    # --- other connections' commits ---------------------------------------------------------
    def watch_commits(self, interval: float, on_change: Callable[[], None]
                      ) -> Callable[[], Awaitable[None]]:
        loop = asyncio.get_running_loop()
        conn = connection.connect(self.path, busy_timeout_ms=WATCH_BUSY_TIMEOUT_MS)
        task = loop.create_task(_watch(conn, interval, on_change), name="evq-watch")

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            conn.close()

        return stop


async def _watch(conn: sqlite3.Connection, interval: float, on_change: Callable[[], None]
                 ) -> None:
    """Call `on_change()` within `interval` seconds of another connection's commit:
    `PRAGMA data_version` changes then, and reading it costs microseconds."""
    seen = conn.execute(sql.DATA_VERSION).fetchone()[0]
    while True:
        await asyncio.sleep(interval)  # real time: it watches the file, not jobs
        try:
            version = conn.execute(sql.DATA_VERSION).fetchone()[0]
        except sqlite3.Error as exc:
            _log.warning("evq.watch_failed", error=str(exc))
            continue
        if version != seen:
            seen = version
            on_change()


def _refusal(name: str, position: int, holder: str, row: Any) -> str:
    if row is None:
        why = "its cursor is gone from the ledger"
    elif row[1] != holder:
        now_held = f"held by {row[1]}" if row[1] else "free"
        why = f"this consumer no longer holds the name (its lease ran out; it is {now_held})"
    else:
        why = (f"the cursor already stands at {row[0]}, so this event's effects were "
               "committed before")
    return (f"durable handler {name!r} could not move its cursor to {position}: {why}. "
            "Your transaction was rolled back, so none of its writes were committed. Let "
            "this error propagate: the consumer stops delivering and takes the name again, "
            "resuming from the cursor in the ledger")


# --- the consumer's own writes, run by the writer ------------------------------------------
def _take(tx: Tx, name: str, holder: str, previous: str | None, lease: float,
          start: int) -> int | None:
    """Take `name` under the new token `holder` if it is free, its lease has run out, or
    it is still held under `previous`; return the position to resume after, or None."""
    tx.conn.execute(sql.TAKE_CURSOR, (name, start, holder, tx.now + lease, tx.now, previous))
    position, owner = tx.one(sql.GET_CURSOR, (name,))
    return int(position) if owner == holder else None


def _renew(tx: Tx, name: str, holder: str, position: int, lease: float) -> bool:
    """Extend the lease and save the position (never backwards); False if the name is no
    longer held under `holder`."""
    moved = tx.conn.execute(sql.MOVE_CURSOR, (position, tx.now + lease, tx.now, name, holder))
    return moved.rowcount == 1


def _release(tx: Tx, name: str, holder: str, position: int) -> None:
    """Save the position and free the name, if it is still held under `holder`."""
    tx.conn.execute(sql.RELEASE_CURSOR, (position, tx.now, name, holder))
