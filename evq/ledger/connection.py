"""Opening a ledger file: pragmas, durability, and applying migrations."""

from __future__ import annotations

import contextlib
import enum
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiosqlite

from .. import files
from ..errors import LedgerError
from . import schema, sql

MIN_SQLITE = (3, 38, 0)


class Durability(enum.StrEnum):
    """How much a commit survives. PROCESS (the default) survives any crash of any
    process; POWER also survives power loss or an OS crash, at the cost of an fsync per
    commit."""

    PROCESS = "process"
    POWER = "power"


def connect(
    path: str | Path,
    *,
    durability: Durability = Durability.PROCESS,
    busy_timeout_ms: int = 10_000,
    read_only: bool = False,
    check_same_thread: bool = True,
    file_mode: int = files.FILE_MODE,
) -> sqlite3.Connection:
    """A connection in autocommit mode (evq issues BEGIN itself) with evq's pragmas. A
    ledger file that does not exist yet is created with `file_mode` first."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise LedgerError(
            f"evq needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer; this Python "
            f"has {sqlite3.sqlite_version}"
        )
    if read_only:
        if not Path(path).exists():
            raise LedgerError(f"no ledger at {path}: check the path or EVQ_DB")
        uri = f"{Path(path).resolve().as_uri()}?mode=ro"
        conn = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=check_same_thread
        )
    else:
        create_file(path, file_mode)
        conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=check_same_thread
        )
    try:
        conn.execute(sql.SET_BUSY_TIMEOUT.format(ms=busy_timeout_ms))
        for pragma in sql.CONNECTION_PRAGMAS:
            if read_only and pragma.startswith(
                    ("PRAGMA page_size", "PRAGMA journal_mode", "PRAGMA journal_size")):
                continue
            conn.execute(pragma)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise _not_a_database(path, exc) from exc
    level = "FULL" if Durability(durability) is Durability.POWER else "NORMAL"
    conn.execute(sql.SET_SYNCHRONOUS.format(level=level))
    return conn


def create_file(path: str | Path, mode: int) -> None:
    """Create a new ledger file with `mode` (0600 by default) before SQLite opens it:
    SQLite would make it, and its -wal and -shm (which take the ledger's mode), readable
    by everyone under the usual umask. An existing file keeps its mode. If the file
    cannot be made, SQLite's own attempt reports why."""
    if str(path) in ("", ":memory:"):
        return
    with contextlib.suppress(OSError):
        files.create_private(path, mode)


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether an error only says another connection holds the file (try again later)."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_BUSY,
                                                           sqlite3.SQLITE_LOCKED)


def schema_version(conn: sqlite3.Connection) -> int:
    if conn.execute(sql.META_TABLE_EXISTS).fetchone() is None:
        return 0
    row = conn.execute(sql.GET_META, (schema.SCHEMA_VERSION_KEY,)).fetchone()
    return int(row[0]) if row else 0


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the latest version; returns the version it was at before."""
    conn.execute(sql.BEGIN_IMMEDIATE)
    try:
        before = schema_version(conn)
        if before > schema.LATEST_VERSION:
            raise LedgerError(
                f"this ledger has schema version {before}, newer than this evq knows "
                f"({schema.LATEST_VERSION}); upgrade evq"
            )
        for version in range(before, schema.LATEST_VERSION):
            for statement in _statements(schema.MIGRATIONS[version]):
                conn.execute(statement)
            conn.execute(sql.SET_META, (schema.SCHEMA_VERSION_KEY, str(version + 1)))
        conn.execute(sql.COMMIT)
    except BaseException:
        conn.execute(sql.ROLLBACK)
        raise
    return before


def migrate_file(path: str | Path, file_mode: int = files.FILE_MODE) -> tuple[int, int]:
    """Create or upgrade the schema of the ledger at `path` (cuckmq's migrations);
    returns (version before, version now). A new file is created with `file_mode`."""
    conn = connect(path, file_mode=files.check_mode(file_mode))
    try:
        return migrate(conn), schema.LATEST_VERSION
    finally:
        conn.close()


@contextlib.contextmanager
def write_transaction(path: str | Path) -> Iterator[sqlite3.Connection]:
    """One write transaction (`BEGIN IMMEDIATE`) on an existing ledger: committed when
    the block ends, rolled back if it raises."""
    if not Path(path).exists():
        raise LedgerError(f"no ledger at {path}: check the path or EVQ_DB")
    conn = connect(path)
    try:
        require_schema(conn, path)
        conn.execute(sql.BEGIN_IMMEDIATE)
        try:
            yield conn
            conn.execute(sql.COMMIT)
        except BaseException:
            if conn.in_transaction:
                conn.execute(sql.ROLLBACK)
            raise
    finally:
        conn.close()


def _not_a_database(path: str | Path, exc: sqlite3.DatabaseError) -> LedgerError:
    return LedgerError(f"{path} is not a SQLite database ({exc}): check the path or EVQ_DB")


def require_schema(conn: sqlite3.Connection, path: str | Path) -> None:
    try:
        version = schema_version(conn)
    except sqlite3.DatabaseError as exc:
        raise _not_a_database(path, exc) from exc
    if version == 0:
        raise LedgerError(f"{path} is not an evq ledger (no evq schema): run `evq migrate`")
    if version != schema.LATEST_VERSION:
        raise LedgerError(
            f"{path} has schema version {version}, this evq expects "
            f"{schema.LATEST_VERSION}: run `evq migrate --db {path}`"
        )


def _statements(script: str) -> list[str]:
    """Split a migration script into complete statements (triggers included)."""
    out: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--") and not current.strip():
            continue
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip():
        out.append(current.strip())
    return out


async def open_reader(path: str | Path) -> aiosqlite.Connection:
    """An async read connection beside the writer (WAL lets it read while jobs commit)."""
    import aiosqlite

    conn = await aiosqlite.connect(str(path), isolation_level=None)
    await conn.execute(sql.SET_BUSY_TIMEOUT.format(ms=10_000))
    for pragma in sql.CONNECTION_PRAGMAS:
        if pragma.startswith("PRAGMA wal_autocheckpoint"):
            await conn.execute(pragma)
    return conn
