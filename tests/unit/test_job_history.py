"""A job's whole history, whatever became of the job: pending, finished, deleted, never
added. (Its enqueue event is found through the job, not through the by-job index.)"""

from __future__ import annotations

import pytest

import evq
from evq import audit
from evq.ledger import open_ledger
from evq.ledger.sqlite import replay


def _history(db, text: str) -> tuple[str, list[str]]:
    ledger = open_ledger(db)
    job_id = audit.resolve_job_id(ledger, text)
    return job_id, [event.kind for event in ledger.job_history(job_id)]


async def test_every_event_of_a_job_is_found_in_each_state_and_after_delete(ctx, db):
    ctx.define("work", lambda payload: payload)
    pending = await ctx.enqueue("work", 1)
    done = await ctx.enqueue("work", 2)
    assert _history(db, pending) == (pending, ["enqueue"])
    await ctx.drain()
    finished = ["enqueue", "dequeue", "run", "success"]
    assert _history(db, done)[1] == finished
    await ctx.delete(done)
    assert _history(db, done)[1] == [*finished, "delete"]
    # the short forms the CLI accepts: the id's tail, or a unique prefix of it
    assert _history(db, done[-8:]) == (done, [*finished, "delete"])
    assert _history(db, pending[-8:])[0] == pending
    assert _history(db, done[:28])[0] == done
    assert replay.check(db).ok


async def test_a_refused_job_is_found_by_its_reject_event(ctx, db):
    ctx.define("picky", None, on_before_add=lambda job, *_: "not today")
    with pytest.raises(evq.JobRejected) as refused:
        await ctx.enqueue("picky", 1)
    (job_id,) = refused.value.reasons
    assert _history(db, job_id[-8:]) == (job_id, ["reject"])


async def test_an_unknown_or_ambiguous_id_is_a_clear_error(ctx, db):
    ctx.define("work", None)
    first = await ctx.enqueue("work", 1)
    second = await ctx.enqueue("work", 2)
    with pytest.raises(evq.UnknownJob, match="no job with id"):
        _history(db, "zzzz")
    differ = next(i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b)
    shared = first[:differ]  # the milliseconds they were made in
    assert len(shared) >= 8
    with pytest.raises(evq.InvalidInput, match="more than one job"):
        _history(db, shared)
