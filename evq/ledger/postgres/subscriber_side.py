"""The subscriber side of the PostgreSQL engine: durable cursors (the SQLite engine's own
operations, through the writer), a handler moving its cursor in its own psycopg
transaction, and noticing other processes' commits: LISTEN on the ledger's channel
(each commit NOTIFYs it), with a poll of the newest position as the fallback, so that a
notification lost with a dropped connection cannot leave a job waiting."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from ...errors import ContextClosed, CursorLost, InvalidInput
from ...logs import get_logger
from ..records import CursorLease
from ..sqlite import sql as named
from ..sqlite.subscriber_side import SubscriberSide, _refusal
from . import connection, failures, sql
from .base import PgBase
from .dialect import translate
from .writer import Writer

# However quiet the channel, the newest position is read at least this often.
POLL_AT_LEAST = 1.0

_log = get_logger("evq.watch")


class PgSubscriberSide(SubscriberSide, PgBase):
    """Durable cursors and commit watching on PostgreSQL."""

    # Both set by the runtime side while the runtime is open.
    _writer: Writer | None  # type: ignore[assignment]
    _reader: psycopg.AsyncConnection[Any] | None  # type: ignore[assignment]

    async def cursor_lease(self, name: str) -> CursorLease | None:
        read = getattr(self, "_read", None)
        if read is None or self._writer is None:
            raise ContextClosed("the evq context is not open: durable handlers need it open")
        rows = await read(named.CURSOR_LEASE, (name,))
        return None if not rows else CursorLease(rows[0][0], rows[0][1])

    def advance_cursor_in(self, conn: object, name: str, holder: str, position: int,
                          now: float) -> None:
        if not isinstance(conn, psycopg.Connection):
            kind = f"{type(conn).__module__}.{type(conn).__qualname__}"
            raise InvalidInput(
                f"advance_cursor takes the psycopg.Connection your handler writes its rows "
                f"with, open on {self.target.shown}, got a {kind}; nothing was written")
        table = psycopg.sql.SQL("{}.evq_cursors").format(
            psycopg.sql.Identifier(self.target.schema))
        try:
            moved = conn.execute(psycopg.sql.SQL(sql.MOVE_CURSOR_IN_SCHEMA).format(
                cursors=table), (position, now, name, holder, position)).rowcount
            if moved == 1:
                return
            row = conn.execute(psycopg.sql.SQL(sql.GET_CURSOR_IN_SCHEMA).format(
                cursors=table), (name,)).fetchone()
            conn.rollback()
        except psycopg.Error as exc:
            raise failures.ledger_error(
                exc, self.target.shown,
                f"moving the cursor of durable handler {name!r} in") from None
        raise CursorLost(_refusal(name, position, holder, row))

    def watch_commits(self, interval: float, on_change: Callable[[], None]
                      ) -> Callable[[], Awaitable[None]]:
        writer = self._writer

        def own() -> int | None:
            # Asked at each notification: the writer's session changes when it connects
            # again (after a restart or a cut), and its own commits must not count as
            # another process's.
            return writer.backend_pid if writer is not None else None

        task = asyncio.get_running_loop().create_task(
            _watch(self, interval, on_change, own), name="evq-watch")

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        return stop


async def _watch(ledger: PgBase, interval: float, on_change: Callable[[], None],
                 own: Callable[[], int | None]) -> None:
    """Call `on_change()` when another connection commits: at once on its NOTIFY, and
    within max(interval, POLL_AT_LEAST) seconds by the newest position whatever happens
    to notifications. Connects again after the server went away."""
    channel = psycopg.sql.SQL("LISTEN {}").format(
        psycopg.sql.Identifier(sql.channel(ledger.target.schema)))
    poll = max(interval, POLL_AT_LEAST)
    seen: int | None = None
    while True:
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            conn = await connection.connect_async(ledger.target, "watching")
            await conn.execute(channel)
            # Whatever committed before this connection listened went unheard.
            on_change()
            while True:
                cursor = await conn.execute(translate(named.HEAD_POSITION))
                row = await cursor.fetchone()
                head = int(row[0]) if row else 0
                if seen is not None and head != seen:
                    on_change()  # a commit whose notification never came
                seen = head
                async for note in conn.notifies(timeout=poll):
                    if note.pid != own():
                        on_change()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the server went away: say so, wait, connect again
            _log.warning("evq.watch_failed", error=str(failures.ledger_error(
                exc, ledger.target.shown, "watching")))
            await asyncio.sleep(poll)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

