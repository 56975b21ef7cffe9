"""The ledger seam: the one interface evq's runtime, CLI and tools use to reach storage
(`Ledger`, in interface.py), the records that cross it (records.py), and `open_ledger`,
which picks the engine for a path or URL. Engines live in subpackages (sqlite/); nothing
above this package imports a driver or holds SQL text."""

from __future__ import annotations

from pathlib import Path

from ..errors import InvalidInput
from .interface import Ledger
from .records import Durability

__all__ = ["Ledger", "open_ledger", "schema_sql"]

_SQLITE_PREFIXES = ("sqlite:///", "sqlite://")
_POSTGRES_PREFIXES = ("postgresql://", "postgres://")


def open_ledger(url_or_path: str | Path, *, busy_timeout: float = 10.0,
                durability: Durability | str = Durability.PROCESS,
                file_mode: int | None = None) -> Ledger:
    """The ledger at `url_or_path`: a file path or `sqlite:///path` is a SQLite ledger,
    `postgresql://user@host:5432/db[?schema=evq]` a PostgreSQL one (the extra
    `evq[postgres]`). Opening connects nothing yet; each operation connects as it needs,
    and the runtime (writer, watcher) starts with `await ledger.open(...)`."""
    if isinstance(url_or_path, Path):
        path = url_or_path
    else:
        text = str(url_or_path)
        if text.startswith(_POSTGRES_PREFIXES):
            return _postgres(text, busy_timeout)
        if "://" in text and not text.startswith(_SQLITE_PREFIXES):
            scheme = text.split("://", 1)[0]
            raise InvalidInput(
                f"unknown ledger URL scheme {scheme!r}: give a file path, sqlite:///path "
                "or postgresql://user@host/database")
        for prefix in _SQLITE_PREFIXES:
            if text.startswith(prefix):
                text = text[len(prefix):]
                break
        if not text:
            raise InvalidInput("the ledger path is empty: give a file path or sqlite:///path")
        path = Path(text)
    from . import sqlite  # the default engine; imported here so the seam stays light

    return sqlite.SqliteLedger(path, busy_timeout=busy_timeout, durability=durability,
                               file_mode=file_mode)


def _postgres(url: str, busy_timeout: float) -> Ledger:
    try:
        from . import postgres
    except ImportError as exc:
        if exc.name not in ("psycopg", "psycopg_binary", "psycopg_c"):
            raise
        raise InvalidInput(
            "PostgreSQL ledgers need psycopg 3: pip install 'evq[postgres]'") from None
    from .postgres import url as urls

    return postgres.PostgresLedger(urls.parse(url), busy_timeout=busy_timeout)


def schema_sql(engine: str = "sqlite") -> str:
    """The SQL of the current schema of `engine` (what `evq migrate` creates)."""
    if engine in ("postgresql", "postgres"):
        from .postgres import schema as pg_schema

        return pg_schema.schema_sql()
    if engine != "sqlite":
        raise InvalidInput(f"unknown ledger engine {engine!r}: this evq has 'sqlite' and "
                           "'postgresql'")
    from .sqlite import schema

    return schema.schema_sql()
