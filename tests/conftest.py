"""Shared fixtures: a fresh ledger path and an open Context on a fake clock; the
PostgreSQL server of the tests (`postgres_url`, see pg_server.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pg_server import postgres_url as postgres_url  # the fixture, for every test
from pg_server import pytest_runtest_makereport as pytest_runtest_makereport

import evq


@pytest.fixture
def clock() -> evq.FakeClock:
    return evq.FakeClock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
async def ctx(db: Path, clock: evq.FakeClock) -> AsyncIterator[evq.Context]:
    async with evq.Context(db, clock=clock) as context:
        yield context
