"""The PostgreSQL ledger's schema, shipped in this package: `schema.sql` is the current
schema, which makes a new ledger in its own PostgreSQL schema (the engine creates that
schema and runs the script with `search_path` pointing at it), and `migrations/NNNN.sql`
are the frozen scripts that upgrade an older ledger one version each (connection.migrate
runs them and stamps each version). PostgreSQL ledgers number their schema versions on
their own, from 1. tests/unit/test_postgres_schema.py checks that both give the same
schema."""

from __future__ import annotations

import re
from importlib import resources

SCHEMA_VERSION_KEY = "schema_version"

_FILES = resources.files("evq.ledger.postgres")


def _migrations() -> tuple[str, ...]:
    """The migration scripts in order, checked to be numbered 0001 to N without a gap
    (a missing file would otherwise shift every version after it)."""
    names = sorted(entry.name for entry in (_FILES / "migrations").iterdir()
                   if re.fullmatch(r"\d{4}\.sql", entry.name))
    expected = [f"{number:04d}.sql" for number in range(1, len(names) + 1)]
    if names != expected:
        raise RuntimeError(f"evq's PostgreSQL migrations are damaged: found {names}, "
                           f"expected {expected}; reinstall evq")
    return tuple((_FILES / "migrations" / name).read_text("utf-8") for name in names)


# The current schema; it ends by stamping LATEST_VERSION (tests check they agree).
SCHEMA = (_FILES / "schema.sql").read_text("utf-8")

# Entry i upgrades a ledger from version i to version i + 1 (entry 0 makes version 1 from
# nothing; a new ledger gets schema.sql instead); never edit one that shipped.
MIGRATIONS: tuple[str, ...] = _migrations()

LATEST_VERSION = len(MIGRATIONS)

# Every table of the schema: a ledger missing any is damaged.
TABLES = frozenset(re.findall(r"^CREATE TABLE (?:IF NOT EXISTS )?(\w+)", SCHEMA, re.M))


def _statement(start: str) -> str:
    found = re.search(rf"^{re.escape(start)}\b.*?;", SCHEMA, re.M | re.S)
    if found is None:
        raise RuntimeError(f"schema.sql has no statement {start!r}; reinstall evq")
    return found.group(0)


# Archiving lifts this one trigger inside its own transaction, and restores it.
EVENTS_NO_DELETE = _statement("CREATE TRIGGER evq_events_no_delete")


def schema_sql() -> str:
    """The whole schema as one script, as `evq schema --engine postgresql` prints it."""
    return SCHEMA
