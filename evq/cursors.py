"""Who may move a durable handler's cursor: holder tokens, the delivery a handler runs in,
and `advance_cursor` (the fenced writes themselves are the ledger's: take_cursor,
move_cursor, release_cursor, advance_cursor_in).

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
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

import attrs

from .errors import CursorLost, InvalidInput

if TYPE_CHECKING:
    from .ledger import Ledger


@attrs.define(eq=False)
class Delivery:
    """An event a durable consumer is handing to its handler, under which holder token.
    `refused` turns true when the handler's `advance_cursor` was refused."""

    ledger: Ledger
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


def advance_cursor(conn: object, name: str, position: int, now: float) -> None:
    """Move durable handler `name`'s cursor to `position` inside the caller's own open
    transaction on the ledger (for a SQLite ledger: the plain `sqlite3.Connection` the
    handler writes its rows with), so the handler's rows and its progress commit
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
    try:
        delivery.ledger.advance_cursor_in(conn, name, delivery.holder, position, now)
    except CursorLost:
        delivery.refused = True
        raise
