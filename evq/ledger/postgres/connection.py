"""Connections to a PostgreSQL ledger: opened with `search_path` on the ledger's own
schema (so the shared statements name tables unqualified), the schema made or checked,
and every driver error raised as the typed error that says what happened."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql as pgsql

from ...errors import LedgerNotFound, LedgerSchemaError
from ..sqlite import sql as named
from . import schema, sql
from .dialect import Dialect
from .failures import ledger_error
from .url import Target

APPLICATION = "evq"


def _search_path(target: Target) -> pgsql.Composed:
    return pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(target.schema))


def connect(target: Target, doing: str = "connecting to",
            busy_timeout_ms: int | None = None) -> Dialect:
    """A new autocommit connection (evq opens its transactions explicitly). With
    `busy_timeout_ms`, a wait for a lock another session holds (the append lock, a table
    lock) ends after that long with LedgerLocked, as on SQLite, unless the URL set its
    own lock_timeout (`options=-c lock_timeout=...`)."""
    try:
        raw = psycopg.connect(target.conninfo, autocommit=True,
                              application_name=APPLICATION)
    except psycopg.Error as exc:
        raise ledger_error(exc, target.shown, doing) from None
    try:
        raw.execute(_search_path(target))
        if busy_timeout_ms is not None:
            raw.execute(sql.LOCK_TIMEOUT_UNLESS_SET, (_lock_timeout(busy_timeout_ms),))
    except psycopg.Error as exc:
        raw.close()
        raise ledger_error(exc, target.shown, doing) from None
    return Dialect(raw)


def _lock_timeout(busy_timeout_ms: int) -> str:
    return f"{max(busy_timeout_ms, 1)}ms"  # 0 would mean "wait forever"


async def connect_async(target: Target, doing: str = "connecting to",
                        busy_timeout_ms: int | None = None) -> psycopg.AsyncConnection[Any]:
    try:
        conn = await psycopg.AsyncConnection.connect(
            target.conninfo, autocommit=True, application_name=APPLICATION)
    except psycopg.Error as exc:
        raise ledger_error(exc, target.shown, doing) from None
    try:
        await conn.execute(_search_path(target))
        if busy_timeout_ms is not None:
            await conn.execute(sql.LOCK_TIMEOUT_UNLESS_SET, (_lock_timeout(busy_timeout_ms),))
    except psycopg.Error as exc:
        await conn.close()
        raise ledger_error(exc, target.shown, doing) from None
    return conn


@contextlib.contextmanager
def session(target: Target, doing: str = "reading") -> Iterator[Dialect]:
    """A short-lived connection; driver errors leave as typed errors."""
    conn = connect(target, doing)
    try:
        yield conn
    except psycopg.Error as exc:
        raise ledger_error(exc, target.shown, doing) from None
    finally:
        conn.close()


def schema_version(conn: Dialect) -> int:
    if conn.execute(named.META_TABLE_EXISTS).fetchone() is None:
        return 0
    row = conn.execute(named.GET_META, (schema.SCHEMA_VERSION_KEY,)).fetchone()
    return int(row[0]) if row else 0


def migrate(target: Target) -> tuple[int, int]:
    """Create the ledger's schema or upgrade an older one; (version before, now). Safe
    from many processes at once: they take turns on an advisory lock, and each after the
    first finds the schema made (or upgraded)."""
    with session(target, "migrating") as conn:
        raw = conn.raw
        raw.execute(sql.BEGIN_WRITE)
        try:
            before = migrate_in(conn, target)
            raw.execute(sql.COMMIT)
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                raw.execute(sql.ROLLBACK)
            raise
    return before, schema.LATEST_VERSION


def migrate_in(conn: Dialect, target: Target) -> int:
    """`migrate` inside the transaction open on `conn` (it commits or rolls back with
    it: PostgreSQL's DDL is transactional); the version before. A new ledger gets
    schema.sql (which stamps its version); an older one runs the frozen migrations from
    its version on, each version stamped once its script has run."""
    raw = conn.raw
    raw.execute(sql.LOCK_MIGRATIONS, (target.migrate_key,))
    raw.execute(pgsql.SQL(sql.CREATE_SCHEMA).format(pgsql.Identifier(target.schema)))
    before = schema_version(conn)
    if before > schema.LATEST_VERSION:
        raise _newer(target, before)
    if before == 0:
        raw.execute(schema.SCHEMA.encode())
    else:
        for version in range(before, schema.LATEST_VERSION):
            raw.execute(schema.MIGRATIONS[version].encode())
            conn.execute(named.SET_META, (schema.SCHEMA_VERSION_KEY, str(version + 1)))
    require_tables(conn, target)
    return before


def _newer(target: Target, version: int) -> LedgerSchemaError:
    return LedgerSchemaError(
        f"the ledger {target.shown} has schema version {version}, newer than this evq "
        f"knows ({schema.LATEST_VERSION}): a newer evq wrote it; upgrade evq to read or "
        "write it (this one changed nothing)")


def require_schema(conn: Dialect, target: Target) -> None:
    """Refuse, with a typed error saying what to do, a schema that is not a complete evq
    ledger of this evq's version."""
    version = schema_version(conn)
    if version == 0 and conn.raw.execute(sql.SCHEMA_EXISTS, (target.schema,)).fetchone() is None:
        raise LedgerNotFound(
            f"no evq ledger at {target.shown}: the database has no schema "
            f"{target.schema!r}. Check the URL (--db or EVQ_DB; ?schema= names the schema), "
            f"or run `evq migrate --db {target.shown}` to make one")
    if version == 0:
        raise LedgerSchemaError(
            f"{target.shown} has no evq ledger in schema {target.schema!r}: check the URL, "
            f"or run `evq migrate --db {target.shown}` to make one")
    if version > schema.LATEST_VERSION:
        raise _newer(target, version)
    if version != schema.LATEST_VERSION:
        raise LedgerSchemaError(
            f"{target.shown} has schema version {version}, this evq expects "
            f"{schema.LATEST_VERSION}: run `evq migrate --db {target.shown}`")
    require_tables(conn, target)


def require_tables(conn: Dialect, target: Target) -> None:
    present = {row[0] for row in conn.execute(named.EVQ_TABLES)}
    missing = sorted(schema.TABLES - present)
    if missing:
        raise LedgerSchemaError(
            f"the ledger {target.shown} has lost its table(s) {', '.join(missing)}: it is "
            "not a complete evq ledger (a table was dropped by hand?). Restore it from a "
            "backup; nothing was changed")
