"""The figures over a window (evq stats, the dashboard's overview) read a bounded number
of events when asked to: the window then starts at the first of them."""

from __future__ import annotations

from pathlib import Path

import evq
from evq import stats
from evq.ledger import open_ledger


async def test_at_most_the_newest_events_of_a_window_are_read(db: Path) -> None:
    clock = evq.FakeClock()
    async with evq.Context(db, clock=clock) as ctx:
        ctx.define("ok", lambda p: None, queue="q")
        for _ in range(10):  # one job a second: enqueue, then run and succeed
            await ctx.enqueue("ok", None)
            await ctx.drain()
            clock.advance(1.0)
    ledger = open_ledger(db)
    end = clock.now()
    events = list(ledger.read_events(0))
    whole, window = stats.compute(ledger, end - 100, end)
    assert whole["q"].succeeded == 10 and window == 100
    newest = events[-12:]  # fewer events than the window holds: it starts at them
    found, cut = stats.compute(ledger, end - 100, end, most=12)
    assert cut == end - newest[0].timestamp
    assert found["q"].succeeded == sum(e.kind == "success" for e in newest)
    assert 0 < found["q"].succeeded < 10
    untouched, window = stats.compute(ledger, end - 100, end, most=len(events))
    assert untouched["q"].succeeded == 10 and window == 100


async def test_a_job_made_due_now_waits_from_then(db: Path) -> None:
    clock = evq.FakeClock()
    async with evq.Context(db, clock=clock) as ctx:
        report = ctx.define("report", lambda p: None, queue="q")
        job_id = await report.enqueue(None, delay=3600)
        clock.advance(10)
        await ctx.run_now(job_id)
        clock.advance(1.5)
        await ctx.drain()
    found, _ = stats.compute(open_ledger(db), None, None)
    wait = found["q"].as_dict(1.0)["wait_ms"]
    assert wait is not None and wait["p50"] == 1500.0  # from run now, not from its delay
