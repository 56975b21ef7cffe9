"""Who may move a durable handler's cursor: holder tokens, the delivery a handler runs in,
and the fenced writes.

Each successful take of a name mints a fresh holder token (host, process id and 64 random
bits) and stores it in the cursor's row. Every later write (a renewal of the lease, a save
of the position, a release, the handler's own `advance_cursor`) names that token, so a
consumer that has lost the name can never move the cursor again: it gets the name back
only through a new take, which re-reads the position from the ledger. The cursor only
ever moves forward.

`advance_cursor` learns the token from the delivery it is called in: a context variable
set around the handler call (and copied into the thread that runs a sync handler).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sqlite3
from collections.abc import Iterator
from contextvars import ContextVar

import attrs

from .errors import CursorLost, InvalidInput
from .ledger.sqlite import sql
from .ledger.sqlite.failures import ledger_error
from .ledger.sqlite.tx import Tx


@attrs.define(eq=False)
class Delivery:
    """An event a durable consumer is handing to its handler, under which holder token.
    `refused` turns true when the handler's `advance_cursor` was refused."""

    path: str
    name: str
    holder: str
    position: int
    refused: bool = False


_current: ContextVar[Delivery | None] = ContextVar("evq_durable_delivery", default=None)


@contextlib.contextmanager
def delivering(delivery: Delivery | None) -> Iterator[None]:
    """Make `delivery` the one `advance_cursor` sees, for the duration of the block."""
    token = _current.set(delivery)
    try:
        yield
    finally:
        _current.reset(token)


def new_holder() -> str:
    """A holder token no other take can share: where it runs, and 64 random bits."""
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())
    return f"{host or 'host'}:{os.getpid()}:{secrets.token_hex(8)}"


def advance_cursor(conn: sqlite3.Connection, name: str, position: int, now: float) -> None:
    """Move durable handler `name`'s cursor to `position` inside the caller's own open
    transaction on the ledger file, so the handler's rows and its progress commit
    together: each event's effects are committed exactly once.

    Call it from the handler, for the event it is handling (`event.position`). The move
    is fenced: if this consumer no longer holds the name (its lease ran out and another
    consumer took it), or the cursor already stands at or past `position`, the caller's
    transaction is rolled back (none of its writes are committed) and `CursorLost` is
    raised; let it propagate, and the consumer takes the name again from the cursor in
    the ledger. Called anywhere else, it raises `InvalidInput` and writes nothing."""
    delivery = _current.get()
    if delivery is None:
        raise InvalidInput(
            f"advance_cursor({name!r}, {position!r}) was called outside a delivery of a "
            "durable handler; nothing was written. Call it from the handler registered "
            f"with add_event_handler(..., durable={name!r}), in the thread or task evq "
            "calls it in")
    if name != delivery.name:
        raise InvalidInput(
            f"advance_cursor({name!r}, ...) was called by the durable handler "
            f"{delivery.name!r}; nothing was written. A handler moves only its own cursor")
    if isinstance(position, bool) or not isinstance(position, int) \
            or position > delivery.position:
        raise InvalidInput(
            f"advance_cursor({name!r}, {position!r}): the position must be the one of the "
            f"event being handled ({delivery.position}, event.position) or an earlier "
            "one; nothing was written")
    doing = f"moving the cursor of durable handler {name!r} in"
    try:
        moved = conn.execute(sql.MOVE_CURSOR_IN_CALLERS_TX,
                             (position, now, name, delivery.holder, position)).rowcount
        if moved == 1:
            return
        row = conn.execute(sql.GET_CURSOR, (name,)).fetchone()
        conn.rollback()
    except sqlite3.Error as exc:
        raise ledger_error(exc, delivery.path, doing) from exc
    delivery.refused = True
    raise CursorLost(_refusal(name, position, delivery.holder, row))


def _refusal(name: str, position: int, holder: str, row: tuple[int, str | None] | None
             ) -> str:
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


# --- the consumer's own writes, run by the context's writer ---------------------------
def take(tx: Tx, name: str, holder: str, previous: str | None, lease: float,
         start: int) -> int | None:
    """Take `name` under the new token `holder` if it is free, its lease has run out, or
    it is still held under `previous`; return the position to resume after, or None."""
    tx.conn.execute(sql.TAKE_CURSOR, (name, start, holder, tx.now + lease, tx.now, previous))
    position, owner = tx.one(sql.GET_CURSOR, (name,))
    return int(position) if owner == holder else None


def renew(tx: Tx, name: str, holder: str, position: int, lease: float) -> bool:
    """Extend the lease and save the position (never backwards); False if the name is no
    longer held under `holder`."""
    moved = tx.conn.execute(sql.MOVE_CURSOR, (position, tx.now + lease, tx.now, name, holder))
    return moved.rowcount == 1


def release(tx: Tx, name: str, holder: str, position: int) -> None:
    """Save the position and free the name, if it is still held under `holder`."""
    tx.conn.execute(sql.RELEASE_CURSOR, (position, tx.now, name, holder))
