"""Shared fixtures: a fresh ledger path and an open Context on a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

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
