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

from .. import shipped

SCHEMA_VERSION_KEY = "schema_version"

_FILES = resources.files("evq.ledger.postgres")




# The current schema; it ends by stamping LATEST_VERSION (tests check they agree).
SCHEMA = (_FILES / "schema.sql").read_text("utf-8")

# Entry i upgrades a ledger from version i to version i + 1 (entry 0 makes version 1 from
# nothing; a new ledger gets schema.sql instead); never edit one that shipped.
MIGRATIONS: tuple[str, ...] = shipped.migrations("evq.ledger.postgres")

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
