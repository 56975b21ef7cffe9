"""How the PostgreSQL engine runs the SQL engine's shared operations unchanged.

The operations of evq/ledger/sqlite (ops, flows, trees, maintenance, rescues, seals,
chain, the audit reads) name every statement by its constant in `evq.ledger.sqlite.sql`.
`evq.ledger.postgres.sql` defines the same names, taking the same parameters, in
PostgreSQL's dialect. `Dialect` wraps a psycopg connection so that `execute(STATEMENT,
params)` runs the PostgreSQL text of that named statement: one dictionary lookup, and
the operations stay one definition for both engines."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg

from ...errors import LedgerError
from ..sqlite import sql as sqlite_sql
from . import sql as pg_sql


def _translations() -> dict[str, str | None]:
    """Each statement's text in SQLite -> in PostgreSQL; a family of statements (a
    dictionary under one name) by its keys."""
    table: dict[str, str | None] = {}
    for name in dir(sqlite_sql):
        text = getattr(sqlite_sql, name)
        if name.isupper() and isinstance(text, str):
            table[text] = getattr(pg_sql, name, None)
        elif name.isupper() and isinstance(text, dict):
            theirs = getattr(pg_sql, name, {})
            for key, each in text.items():
                table[each] = theirs.get(key)
    return table


_PG = _translations()
_NAMES = {text: name for name in dir(sqlite_sql)
          if name.isupper() and isinstance(text := getattr(sqlite_sql, name), str)}


def translate(query: str) -> str:
    """The PostgreSQL text of a named statement of the SQLite engine."""
    text = _PG.get(query)
    if text is None:
        name = _NAMES.get(query, query[:60])
        raise LedgerError(f"the statement {name} has no PostgreSQL form in this evq "
                          "(an evq bug: please report it)")
    return text


def scalar(cursor: psycopg.Cursor[Any]) -> Any:
    """The first column of a statement's first row (None without a row)."""
    row = cursor.fetchone()
    return None if row is None else row[0]


class Dialect:
    """A psycopg connection that takes the SQLite engine's named statements."""

    __slots__ = ("raw",)

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, query: str, params: Iterable[Any] = ()) -> psycopg.Cursor[Any]:
        return self.raw.execute(translate(query), tuple(params))

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def close(self) -> None:
        self.raw.close()
