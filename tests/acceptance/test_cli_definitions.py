"""`evq definitions` and `evq migrate`, run as a user would."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import evq
from evq.ledger.sqlite import schema


def evq_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evq", *args], capture_output=True,
                          text=True, timeout=60)


async def test_definitions_lists_deployed_jobs_and_next_runs(tmp_path: Path):
    db = tmp_path / "l.db"
    empty = evq_cli("definitions", "--db", str(db))
    assert empty.returncode == 3 and "no ledger" in empty.stderr
    migrated = evq_cli("migrate", "--db", str(db))
    assert migrated.returncode == 0
    assert f"schema version 0 -> {schema.LATEST_VERSION}" in migrated.stdout
    assert "no job definitions deployed" in evq_cli("definitions", "--db", str(db)).stdout
    async with evq.Context(db) as ctx:
        ctx.define("nightly", lambda p: None, cron="30 2 * * *", queue="reports")
        ctx.define("send", None, queue="mail", max_attempts=7)
        await ctx.orchestrator().tick()  # deploys nothing by itself: deploy() does
        await ctx.deploy()
        await ctx.orchestrator().tick()
    out = evq_cli("definitions", "--db", str(db)).stdout.splitlines()
    assert out[0].split()[:4] == ["job", "queue", "max_attempts", "lease"]
    assert out[1].startswith("nightly") and "cron 30 2 * * *  20" in out[1]
    assert out[2].split()[:5] == ["send", "mail", "7", "60s", "0"]


async def test_subscribers_shows_where_durable_handlers_stand(tmp_path: Path):
    db = tmp_path / "s.db"
    evq_cli("migrate", "--db", str(db))
    assert "no durable event handlers" in evq_cli("subscribers", "--db", str(db)).stdout
    async with evq.Context(db) as ctx:
        ctx.define("job", None)
        await ctx.enqueue("job", 1)
        first, second = asyncio.Event(), asyncio.Event()
        ctx.add_event_handler(lambda e: first.set(), durable="audit-sink")
        ctx.add_event_handler(lambda e: second.set(), kinds=["enqueue"], durable="slow-sink",
                              start="end")
        await asyncio.wait_for(first.wait(), 5)
        await ctx.enqueue("job", 2)
        await asyncio.wait_for(second.wait(), 5)
    header, *lines = evq_cli("subscribers", "--db", str(db)).stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["audit-sink", "slow-sink"]
    for line in lines:
        fields = dict(zip(header.split(), line.split(), strict=False))
        assert int(fields["head"]) - int(fields["position"]) == int(fields["lag"]) >= 0
        assert fields["held_by"] == "-"  # released when the context closed
