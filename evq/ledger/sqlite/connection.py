"""Opening a ledger file: pragmas, durability, and applying migrations."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiosqlite

from ... import files
from ...errors import LedgerError, LedgerNotFound, LedgerSchemaError
from ..records import Durability
from . import schema, sql
from .failures import cannot_open, ledger_error

MIN_SQLITE = (3, 38, 0)


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
    ledger file that does not exist yet is created with `file_mode` first. Raises the
    typed `LedgerError` that says why if the file cannot be opened."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise LedgerError(
            f"evq needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer; this Python "
            f"has {sqlite3.sqlite_version}"
        )
    _check_path(Path(path), read_only)
    try:
        if read_only:
            conn = _open_read_only(Path(path), check_same_thread)
        else:
            create_file(path, file_mode)
            conn = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=check_same_thread
            )
    except sqlite3.Error as exc:
        raise ledger_error(exc, path, "opening", busy_timeout_ms / 1000) from exc
    try:
        conn.execute(sql.SET_BUSY_TIMEOUT.format(ms=busy_timeout_ms))
        for pragma in sql.CONNECTION_PRAGMAS:
            if read_only and pragma.startswith(
                    ("PRAGMA page_size", "PRAGMA journal_mode", "PRAGMA journal_size",
                     "PRAGMA mmap_size", "PRAGMA cache_size")):
                continue
            conn.execute(pragma)
        if read_only:
            # Readers (the CLI, verify, stats) scan long stretches of the file once: a
            # small cache, no memory map, so their memory stays small whatever the size.
            for pragma in sql.READER_PRAGMAS:
                conn.execute(pragma)
        level = "FULL" if Durability(durability) is Durability.POWER else "NORMAL"
        conn.execute(sql.SET_SYNCHRONOUS.format(level=level))
    except sqlite3.Error as exc:
        conn.close()
        raise ledger_error(exc, path, "opening", busy_timeout_ms / 1000) from exc
    return conn


def _check_path(file: Path, read_only: bool) -> None:
    """Refuse at once a path that cannot hold a ledger (SQLite's own errors are vaguer)."""
    if read_only and not file.is_file():
        why = (f"its directory {file.parent} does not exist" if not file.parent.is_dir()
               else "it is a directory, not a ledger file" if file.is_dir()
               else "no such file")
        raise LedgerNotFound(f"no ledger at {file} ({why}): check the path (--db or EVQ_DB)")
    if file.is_dir() or not file.parent.is_dir():
        raise cannot_open(file, f"opening the ledger {file}")


def _open_read_only(file: Path, check_same_thread: bool) -> sqlite3.Connection:
    """A read-only connection. In a read-only directory SQLite cannot create the -shm
    file a reader needs; if there is no -wal file either, every commit is in the file
    itself and no writer can add one (it would have to create the -wal file), so the
    file is read as immutable, which is then exact."""
    uri = f"{file.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None,
                           check_same_thread=check_same_thread)
    try:
        conn.execute(sql.META_TABLE_EXISTS).fetchall()
    except sqlite3.Error as exc:
        conn.close()
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code != sqlite3.SQLITE_CANTOPEN or Path(f"{file}-wal").exists():
            raise
        conn = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None,
                               check_same_thread=check_same_thread)
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
    """Bring the schema to the latest version; returns the version it was at before. A
    new ledger gets schema.sql (which stamps its version); an older one runs the frozen
    migrations from its version on. Raises LedgerSchemaError for a schema newer than this
    evq's or missing a table, and the typed error of any other failure (locked,
    read-only, damaged, ...)."""
    with immediate(conn, file_of(conn), "opening"):
        before = schema_version(conn)
        if before > schema.LATEST_VERSION:
            raise _newer(file_of(conn), before)
        if before == 0:
            for statement in _statements(schema.SCHEMA):
                conn.execute(statement)
        else:
            for version in range(before, schema.LATEST_VERSION):
                for statement in _statements(schema.MIGRATIONS[version]):
                    conn.execute(statement)
                conn.execute(sql.SET_META, (schema.SCHEMA_VERSION_KEY, str(version + 1)))
        require_tables(conn, file_of(conn))
    return before


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection, path: str | Path, doing: str) -> Iterator[None]:
    """`BEGIN IMMEDIATE` on `conn`, committed when the block ends, rolled back if it
    raises; a driver error, in the block or out of it, is raised as the typed error that
    says why (`doing` something to `path`)."""
    try:
        conn.execute(sql.BEGIN_IMMEDIATE)
        try:
            yield
            conn.execute(sql.COMMIT)
        except BaseException:
            if conn.in_transaction:
                conn.execute(sql.ROLLBACK)
            raise
    except sqlite3.Error as exc:
        raise ledger_error(exc, path, doing, busy_timeout(conn)) from exc


def migrate_file(path: str | Path, file_mode: int = files.FILE_MODE) -> tuple[int, int]:
    """Create or upgrade the schema of the ledger at `path` (cuckmq's migrations);
    returns (version before, version now). A new file is created with `file_mode`."""
    conn = connect(path, file_mode=files.check_mode(file_mode))
    try:
        return migrate(conn), schema.LATEST_VERSION
    finally:
        conn.close()


@contextlib.contextmanager
def write_transaction(path: str | Path, busy_timeout_ms: int = 10_000
                      ) -> Iterator[sqlite3.Connection]:
    """One write transaction (`BEGIN IMMEDIATE`) on an existing ledger: committed when
    the block ends, rolled back if it raises. A driver error, in the block or out of it,
    is raised as the typed error that says why."""
    if not Path(path).exists():
        raise LedgerNotFound(f"no ledger at {path}: check the path (--db or EVQ_DB)")
    conn = connect(path, busy_timeout_ms=busy_timeout_ms)
    try:
        require_schema(conn, path)
        with immediate(conn, path, "writing to"):
            yield conn
    finally:
        conn.close()


def file_of(conn: sqlite3.Connection) -> str:
    """The file a connection is open on (for messages)."""
    try:
        for row in conn.execute(sql.DATABASE_LIST):
            if row[1] == "main":
                return str(row[2]) or "(in memory)"
    except sqlite3.Error:
        pass
    return "(unknown file)"


def busy_timeout(conn: sqlite3.Connection) -> float | None:
    """The connection's busy timeout in seconds (for messages)."""
    try:
        return float(conn.execute(sql.GET_BUSY_TIMEOUT).fetchone()[0]) / 1000
    except sqlite3.Error:
        return None


def _newer(path: str | Path, version: int) -> LedgerSchemaError:
    return LedgerSchemaError(
        f"the ledger {path} has schema version {version}, newer than this evq knows "
        f"({schema.LATEST_VERSION}): a newer evq wrote it; upgrade evq to read or write it "
        "(this one changed nothing)")


def require_schema(conn: sqlite3.Connection, path: str | Path) -> None:
    """Refuse, with a typed error saying what to do, a file that is not a complete evq
    ledger of this evq's schema version."""
    try:
        version = schema_version(conn)
        if version == 0:
            raise LedgerSchemaError(
                f"{path} is not an evq ledger (no evq schema): check the path, or run "
                f"`evq migrate --db {path}` to make it one")
        if version > schema.LATEST_VERSION:
            raise _newer(path, version)
        if version != schema.LATEST_VERSION:
            raise LedgerSchemaError(
                f"{path} has schema version {version}, this evq expects "
                f"{schema.LATEST_VERSION}: run `evq migrate --db {path}`")
        require_tables(conn, path)
    except sqlite3.Error as exc:
        raise ledger_error(exc, path, "opening", busy_timeout(conn)) from exc


def require_version(conn: sqlite3.Connection, path: str | Path) -> None:
    """`require_schema` cheap enough for every call (one indexed read): the version
    only. A table dropped since shows when it is used, as a LedgerSchemaError too."""
    try:
        row = conn.execute(sql.GET_META, (schema.SCHEMA_VERSION_KEY,)).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
        row = None
    if row is None or row[0] != str(schema.LATEST_VERSION):
        require_schema(conn, path)  # says what is wrong


def require_tables(conn: sqlite3.Connection, path: str | Path) -> None:
    """Refuse a ledger that has lost a table (dropped by hand, say)."""
    present = {row[0] for row in conn.execute(sql.EVQ_TABLES)}
    missing = sorted(schema.TABLES - present)
    if missing:
        raise LedgerSchemaError(
            f"the ledger {path} has lost its table(s) {', '.join(missing)}: it is not a "
            "complete evq ledger (a table was dropped by hand?). Restore it from a backup; "
            "nothing was changed")


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


async def open_reader(path: str | Path, busy_timeout_ms: int = 10_000
                      ) -> aiosqlite.Connection:
    """An async read connection beside the writer (WAL lets it read while jobs commit)."""
    import aiosqlite

    conn = await aiosqlite.connect(str(path), isolation_level=None)
    try:
        await conn.execute(sql.SET_BUSY_TIMEOUT.format(ms=busy_timeout_ms))
        for pragma in sql.CONNECTION_PRAGMAS:
            if pragma.startswith("PRAGMA wal_autocheckpoint"):
                await conn.execute(pragma)
    except BaseException as exc:
        await conn.close()
        if isinstance(exc, sqlite3.Error):
            raise ledger_error(exc, path, "opening", busy_timeout_ms / 1000) from exc
        raise
    return conn
