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
    if isinstance(exc, pg.LockNotAvailable | pg.DeadlockDetected | pg.SerializationFailure):
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
    """Whether `exc` says the connection is gone (a new one may work)."""
    state = getattr(exc, "sqlstate", None) or ""
    return (isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
            and not isinstance(exc, pg.QueryCanceled)) or state.startswith(("08", "57P"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
