"""The ledger's schema, as SQL shipped in this package: `schema.sql` is the current
schema, which creates a new ledger, and `migrations/NNNN.sql` are the frozen scripts
that upgrade an older ledger one version each (connection.migrate runs them).
tests/unit/test_schema.py checks that both give the same schema. The triggers in them
define every job transition; schema.sql explains them.
"""

from __future__ import annotations

import re
from importlib import resources

from .. import shipped

SCHEMA_VERSION_KEY = "schema_version"

# Error texts raised by the triggers; the ledger maps them to typed errors.
STALE = "evq:stale"
NOT_PENDING = "evq:not_pending"
UNKNOWN_JOB = "evq:unknown_job"
RUNNING = "evq:running"
APPEND_ONLY = "evq:append_only"
FLOW = "evq:flow"

_FILES = resources.files("evq.ledger.sqlite")




# The current schema; it ends by stamping LATEST_VERSION (tests check they agree).
SCHEMA = (_FILES / "schema.sql").read_text("utf-8")

# Entry i upgrades a ledger from version i to version i + 1; never edit one that shipped.
MIGRATIONS: tuple[str, ...] = shipped.migrations("evq.ledger.sqlite")

LATEST_VERSION = len(MIGRATIONS)

# Every table of the schema (no migration drops one): a ledger missing any is damaged.
TABLES = frozenset(re.findall(r"^CREATE TABLE (?:IF NOT EXISTS )?(\w+)", SCHEMA, re.M))


def _statement(start: str) -> str:
    """The statement of schema.sql that begins with `start` (one ending in `END;`)."""
    found = re.search(rf"^{re.escape(start)}\b.*?\bEND;", SCHEMA, re.M | re.S)
    if found is None:
        raise RuntimeError(f"schema.sql has no statement {start!r}; reinstall evq")
    return found.group(0)


# Archiving lifts this one trigger inside its own transaction, and restores it.
EVENTS_NO_DELETE = _statement("CREATE TRIGGER evq_events_no_delete")


def schema_sql() -> str:
    """The whole current schema as one SQL script (schema.sql), as `evq schema` prints
    it: running it makes an empty ledger of this version."""
    return SCHEMA
