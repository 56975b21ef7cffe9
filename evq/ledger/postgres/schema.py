"""The PostgreSQL ledger's schema, shipped in this package: `schema.sql` makes a new
ledger in its own PostgreSQL schema (the engine creates that schema and runs the script
with `search_path` pointing at it). PostgreSQL ledgers number their schema versions on
their own, from 1; `migrations/NNNN.sql` will hold the frozen upgrades when there are."""

from __future__ import annotations

import re
from importlib import resources

SCHEMA_VERSION_KEY = "schema_version"
SCHEMA = (resources.files("evq.ledger.postgres") / "schema.sql").read_text("utf-8")
LATEST_VERSION = 1

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
