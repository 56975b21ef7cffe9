"""verify's replay check (which runs beside the chain walk, in a thread of its own) stops
when verify gives up, and leaves no scratch file behind either way."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import evq
from evq.ledger import open_ledger
from evq.ledger.sqlite import replay


async def some_jobs(db: Path) -> None:
    async with evq.Context(db, clock=evq.FakeClock()) as ctx:
        ctx.define("job", lambda p: None)
        await ctx.enqueue_many(("job", i) for i in range(50))
        await ctx.drain()


def scratch_dirs(where: Path) -> list[Path]:
    return sorted(where.glob("evq-verify-*"))


async def test_a_replay_check_asked_to_stop_stops_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "ledger.db"
    await some_jobs(db)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
    stop = threading.Event()
    assert replay.check(db, stop).ok  # not asked to stop: a full check
    stop.set()
    with pytest.raises(replay.Stopped):
        replay.check(db, stop)
    assert scratch_dirs(scratch) == []
    check = open_ledger(db).verify()
    assert check.replay is not None and check.replay.ok
