"""psycopg's errors mapped to evq's typed errors, in one place: whatever the server or
the connection to it says (down, restarting, refused, timed out, a table missing, a
refusal by evq's own triggers that no operation caught) becomes the `evq.LedgerError`
subclass that says what happened. Messages name the ledger by its URL with the password
replaced; the driver's own text never carries the password (libpq does not repeat it)."""

from __future__ import annotations

import psycopg
from psycopg import errors as pg

from ...errors import (
    LedgerError,
    LedgerFull,
    LedgerLocked,
    LedgerReadOnly,
    LedgerSchemaError,
    LedgerUnavailable,
)

# SQLSTATE classes: 08 connection, 53 resources, 57 operator intervention (shutdown,
# statement timeout, cancel), 40 rollback (deadlock, serialization).
_CONNECTION = "08"


def ledger_error(exc: BaseException, shown: str, doing: str = "using") -> LedgerError:
    """The typed error for a driver error raised while `doing` something to the ledger
    `shown` (its URL, password replaced)."""
    where = f"{doing} the ledger {shown}"
    text = _first_line(exc)
    state = getattr(exc, "sqlstate", None) or ""
    if isinstance(exc, pg.QueryCanceled):
        return LedgerLocked(
            f"{where}: a statement ran past its time limit ({text}); nothing of it was "
            "written. Look for a long transaction holding the ledger, or raise "
            "statement_timeout")
    if isinstance(exc, pg.LockNotAvailable):
        return LedgerLocked(
            f"{where}: another session held a lock the ledger needs for longer than "
            f"lock_timeout (the context's busy_timeout) ({text}); nothing was written. "
            "Try again; if it lasts, look for a long transaction holding the ledger")
    if isinstance(exc, pg.DeadlockDetected | pg.SerializationFailure):
        return LedgerLocked(f"{where}: {text}; nothing was written, try again")
    if isinstance(exc, pg.DiskFull | pg.OutOfMemory):
        return LedgerFull(f"{where}: the server is out of space ({text}); nothing was "
                          "written. Free some space on the server, then try again")
    if isinstance(exc, pg.ReadOnlySqlTransaction):
        return LedgerReadOnly(f"{where}: the server accepts only reads ({text}); connect "
                              "to the primary")
    if isinstance(exc, pg.InsufficientPrivilege):
        return LedgerReadOnly(f"{where}: this user may not do that ({text}); grant it "
                              "rights on the ledger's schema")
    if isinstance(exc, pg.UndefinedTable | pg.UndefinedColumn | pg.UndefinedFunction
                  | pg.InvalidSchemaName):
        return LedgerSchemaError(
            f"{where}: {text}: the schema is not a complete evq ledger (a table was "
            "dropped?). Run `evq migrate --db URL`, or restore it from a backup")
    if (isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
            or state.startswith((_CONNECTION, "57", "53"))):
        return LedgerUnavailable(
            f"{where}: the PostgreSQL server cannot be reached or went away ({text}). "
            "Check that it is running and the URL is right (--db or EVQ_DB); evq "
            "reconnects on its own once it is back, and nothing unconfirmed was written")
    return LedgerError(f"{where}: {text}")


def is_disconnect(exc: BaseException) -> bool:
    """Whether `exc` says the connection is gone (a new one may work). An error the
    server sent has a SQLSTATE, and only classes 08 (connection) and 57P (the session
    ended: shutdown, pg_terminate_backend) mean the session is gone: a lock or statement
    timeout, a full disk, are OperationalErrors too, but the connection is still good.
    One with no SQLSTATE is libpq finding the connection broken."""
    state = getattr(exc, "sqlstate", None) or ""
    if state:
        return state.startswith(("08", "57P"))
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def fails_the_batch(exc: BaseException) -> bool:
    """Whether `exc`, raised by one operation of a group commit, is the server's or the
    connection's trouble (gone, a lock or statement timeout, a deadlock, out of space:
    psycopg's OperationalError family), not that operation's: the whole batch fails
    with it at once, rather than being redone operation by operation (which would wait
    out the same timeout again for nothing). A refusal or a bad value is the
    operation's own, and fails only it."""
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
