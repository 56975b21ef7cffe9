"""The dashboard's tests: a page at a past moment waits for its build (as long as a
test may take) instead of answering with the build's progress after WAIT, so that what
a test sees does not depend on how fast this machine replays; the test of the progress
page sets WAIT itself."""

from __future__ import annotations

import pytest

from evq.web import travel


@pytest.fixture(autouse=True)
def travel_waits_for_its_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(travel, "WAIT", 60.0)
