"""verify's progress: on a ledger of tens of thousands of events, the callback hears each
stage in order (storage, where the engine checks it; the hash chain; replay), on the
thread that called verify, now and then rather than per event, with `done` increasing
to `total` (the head position); what the callback raises ends verify and propagates."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from ledger_kit import claim, new_job, sound, success

import evq
from evq.ledger import Ledger

STAGES = ("storage", "hash chain", "replay")
Heard = list[tuple[str, int, int, int]]  # (stage, done, total, thread ident)


async def many_events(ledger: Ledger, clock: evq.FakeClock, jobs: int = 25_000) -> int:
    """`jobs` jobs enqueued 1,000 to a commit, a few of them run: the head position."""
    for _ in range(jobs // 1000):
        await ledger.enqueue([new_job(clock, payload=n) for n in range(1000)])
    for attempt in await claim(ledger, names=["n"], limit=10):
        await ledger.report(attempt, success())
    return ledger.last_position()


def listener(into: Heard) -> Callable[[str, int, int], None]:
    def heard(stage: str, done: int, total: int) -> None:
        into.append((stage, done, total, threading.get_ident()))
    return heard


async def test_verify_tells_each_stage_in_order_up_to_the_head(
        ledger: Ledger, clock: evq.FakeClock) -> None:
    head = await many_events(ledger, clock)
    heard: Heard = []
    sound(ledger.verify(progress=listener(heard)))
    assert {thread for *_, thread in heard} == {threading.get_ident()}
    order = [stage for n, (stage, *_) in enumerate(heard) if n == 0 or heard[n - 1][0] != stage]
    # Each stage once, in order (an engine whose server keeps its own pages whole has no
    # storage stage); the chain and replay always.
    assert order == [stage for stage in STAGES if stage in order]
    assert "hash chain" in order and "replay" in order
    for stage in order:
        figures = [(done, total) for name, done, total, _ in heard if name == stage]
        dones = [done for done, _ in figures]
        assert dones == sorted(set(dones)), (stage, figures)  # increasing
        assert {total for _, total in figures} == {head}, (stage, figures)
        assert figures[-1] == (head, head), (stage, figures)
    chain = [done for stage, done, *_ in heard if stage == "hash chain"]
    assert len(chain) >= 2 and chain[0] < head  # told along the way, not only at the end
    assert len(heard) < head / 1000  # now and then, not per event


async def test_verify_without_a_listener_is_unchanged(ledger: Ledger,
                                                       clock: evq.FakeClock) -> None:
    await many_events(ledger, clock, jobs=2000)
    heard: Heard = []
    quiet, told = ledger.verify(), ledger.verify(progress=listener(heard))
    assert heard and quiet == told


class Refused(Exception):
    """What the test's listener raises."""


async def test_what_the_listener_raises_ends_verify(ledger: Ledger, clock: evq.FakeClock
                                                    ) -> None:
    # At each stage the engine tells (the storage stage is SQLite's only), in turn.
    await many_events(ledger, clock, jobs=2000)
    stages: Heard = []
    ledger.verify(progress=listener(stages))
    told = list(dict.fromkeys(name for name, *_ in stages))
    assert told and set(told) <= set(STAGES)
    for stage in told:
        heard: Heard = []

        def refuse(name: str, done: int, total: int, stage: str = stage,
                   heard: Heard = heard) -> None:
            heard.append((name, done, total, threading.get_ident()))
            if name == stage:
                raise Refused(name)

        with pytest.raises(Refused, match=stage):
            ledger.verify(progress=refuse)
        assert [name for name, *_ in heard].count(stage) == 1  # nothing after the refusal
        assert {thread for *_, thread in heard} == {threading.get_ident()}
        sound(ledger.verify())  # nothing left behind in the way of the next one
