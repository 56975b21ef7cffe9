"""The engines the conformance suite runs on, and its fixtures. Every test takes a
`ledger` (open on a fake clock) and speaks to it through the `Ledger` interface alone;
an engine joins the suite with one entry in ENGINES (a place for a fresh ledger, a
handle on it, a user's own connection, a forger), and no test changes. The PostgreSQL
engine's tests need a server (see tests/pg_server.py): without one they are skipped."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pg_server
import psycopg
import pytest
from ledger_kit import CallerConnection, Commits, EngineKit
from pg_forger import PgForger
from psycopg import sql
from sqlite_forger import SqliteForger

import evq
from evq.ledger import Ledger, open_ledger, records


class SqliteCaller:
    """A user's own sqlite3 connection to the ledger file, as their code holds it."""

    def __init__(self, place: str) -> None:
        self.conn = sqlite3.connect(place, isolation_level=None)

    def begin(self) -> None:
        self.conn.execute("BEGIN")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        self.conn.execute("ROLLBACK")

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def close(self) -> None:
        self.conn.close()


class PgCaller:
    """A user's own psycopg connection to the ledger's database, on its schema, as their
    code holds it (not in autocommit mode: its first statement opens a transaction)."""

    def __init__(self, place: str) -> None:
        url, schema = pg_server.split_place(place)
        self.conn: psycopg.Connection[Any] = psycopg.connect(url, autocommit=True,
                                                             connect_timeout=10)
        self.conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        self.conn.autocommit = False

    def begin(self) -> None:
        self.conn.execute("SELECT 1")

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    @property
    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def close(self) -> None:
        self.conn.close()


ENGINES = {
    "sqlite": EngineKit("sqlite", place=lambda tmp: str(tmp / "ledger.db"),
                        handle=open_ledger, caller=SqliteCaller, forger=SqliteForger),
    # Each place is a fresh schema on the test server, dropped after the test.
    "postgresql": EngineKit("postgresql", place=lambda tmp: pg_server.new_place(),
                            handle=open_ledger, caller=PgCaller, forger=PgForger),
}


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> Iterator[EngineKit]:
    kit = ENGINES[request.param]
    if kit.name != "postgresql":
        yield kit
        return
    request.getfixturevalue("postgres_url")  # skips (or fails) when there is no server
    try:
        yield kit
    finally:
        # Every fixture that holds a handle depends on `engine`, so all are closed by
        # now, including those of places a test made itself with `engine.place`.
        pg_server.drop_handed_out()


@pytest.fixture
def place(engine: EngineKit, tmp_path: Path) -> str:
    """Where this test's ledger lives (nothing is there yet)."""
    return engine.place(tmp_path)


@pytest.fixture
def commits() -> Commits:
    """The events of each commit the `ledger` fixture's process made, as handed to its
    on_commit, one list per commit."""
    return []


def recorder(into: Commits) -> Callable[[Sequence[records.Committed]], None]:
    return lambda batch: into.append(list(batch))


@pytest.fixture
async def ledger(engine: EngineKit, place: str, clock: evq.FakeClock, commits: Commits
                 ) -> AsyncIterator[Ledger]:
    handle = engine.handle(place)
    await handle.open(clock, recorder(commits))
    yield handle
    await handle.close()


@pytest.fixture
async def other(engine: EngineKit, place: str, clock: evq.FakeClock, ledger: Ledger
                ) -> AsyncIterator[Ledger]:
    """A second handle on the same ledger, as another process holds it."""
    handle = engine.handle(place)
    await handle.open(clock, lambda batch: None)
    yield handle
    await handle.close()


@pytest.fixture
def caller(engine: EngineKit, place: str, ledger: Ledger) -> Iterator[CallerConnection]:
    """A user's own connection to the (open) ledger, closed after the test."""
    connection = engine.caller(place)
    yield connection
    connection.close()
