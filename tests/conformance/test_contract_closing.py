"""Closing and refusals at the seam: close commits what was handed over, and a refused bulk
enqueue names the job it was about."""

from __future__ import annotations

import asyncio

import pytest
from ledger_kit import EngineKit, new_job

import evq
from evq.ledger import Ledger


async def test_close_commits_what_was_handed_over(engine: EngineKit, place: str,
                                                  ledger: Ledger, clock: evq.FakeClock
                                                  ) -> None:
    job = new_job(clock)
    flight = asyncio.ensure_future(ledger.enqueue([job]))  # hands the enqueue over...
    closing = asyncio.ensure_future(ledger.close())  # ...then close runs, before the writer
    await asyncio.wait_for(closing, 10)  # TimeoutError today: close never returns
    assert await flight == [job.id]
    again = engine.handle(place)
    await again.open(clock, lambda batch: None)
    try:
        assert await again.get_job(job.id) is not None
    finally:
        await again.close()


async def test_a_refused_bulk_enqueue_names_the_job_that_clashed(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    taken = new_job(clock)
    await ledger.enqueue([taken])
    fresh = new_job(clock)
    with pytest.raises(evq.JobStateConflict) as refused:
        await ledger.enqueue([fresh, new_job(clock, id=taken.id)])
    assert taken.id in str(refused.value) and fresh.id not in str(refused.value)
