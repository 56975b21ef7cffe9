"""Leadership: one holder leads a role at a time, across handles; the lead passes when
its lease runs out or its holder steps down, and each change of hands is an event."""

from __future__ import annotations

import evq
from evq.ledger import Ledger


async def changes_of_hands(ledger: Ledger) -> list[tuple[str | None, str | None, str]]:
    return [(e.worker, e.data["previous"], e.data["role"])
            for e in await ledger.events(0, 1000, False) if e.kind == "leader"]


async def test_one_holder_leads_at_a_time(ledger: Ledger, other: Ledger,
                                          clock: evq.FakeClock) -> None:
    assert await ledger.lead("orchestrator", "a", 10.0)
    assert not await other.lead("orchestrator", "b", 10.0)
    clock.advance(8)
    assert await ledger.lead("orchestrator", "a", 10.0)  # renewed: now until +18
    clock.advance(8)
    assert not await other.lead("orchestrator", "b", 10.0)
    assert await changes_of_hands(ledger) == [("a", None, "orchestrator")]


async def test_the_lead_passes_when_its_lease_runs_out(ledger: Ledger, other: Ledger,
                                                       clock: evq.FakeClock) -> None:
    assert await ledger.lead("orchestrator", "a", 10.0)
    clock.advance(10)
    assert await other.lead("orchestrator", "b", 10.0)
    assert not await ledger.lead("orchestrator", "a", 10.0)
    assert await changes_of_hands(ledger) == [
        ("a", None, "orchestrator"), ("b", "a", "orchestrator")]


async def test_a_holder_that_steps_down_frees_the_role_at_once(
        ledger: Ledger, other: Ledger, clock: evq.FakeClock) -> None:
    assert await ledger.lead("orchestrator", "a", 60.0)
    await other.step_down("orchestrator", "b")  # not the holder: nothing changes
    assert not await other.lead("orchestrator", "b", 60.0)
    await ledger.step_down("orchestrator", "a")
    assert await other.lead("orchestrator", "b", 60.0)
    assert not await ledger.lead("orchestrator", "a", 60.0)


async def test_roles_are_led_apart(ledger: Ledger, other: Ledger) -> None:
    assert await ledger.lead("orchestrator", "a", 60.0)
    assert await other.lead("checkpoints", "b", 60.0)
    assert not await ledger.lead("checkpoints", "a", 60.0)
