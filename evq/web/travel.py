"""Time travel: the ledger as it stood at a past moment, for every page to read.

A moment is a time (`at`, as people type it: ISO-8601 or `1h`) or a position (`upto`).
The state then is computed from the ledger itself: its events up to that position (the
newest commit stamped at or before the time; a commit's events share its time and end
with its seal, so the cut always falls between commits) are loaded into a new SQLite
ledger in a temporary folder through the same transitions as the write path, exactly
as `evq export | evq import` does, so it works for either engine. The first page at a
moment waits for that (seconds on a big ledger); the last few moments are kept, and
every page at one of them then reads that small ledger. Nothing is ever written to the
real one."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from collections import OrderedDict

import attrs
from starlette.concurrency import run_in_threadpool

from ..errors import InvalidInput
from ..ledger import Ledger, open_ledger

KEPT = 3  # moments kept built at once


@attrs.frozen
class Moment:
    """Where a page travels to: a position, with what the user asked for."""

    position: int
    asked: str  # the time or position as given, for the banner and the links
    key: str  # the query parameter it came in (`at` or `upto`)
    time: float | None  # the time asked for (None: a position was)


class Travels:
    """The ledgers built for past moments, newest use last."""

    def __init__(self) -> None:
        self._built: OrderedDict[int, tuple[tempfile.TemporaryDirectory[str], Ledger]] = (
            OrderedDict())
        self._lock = asyncio.Lock()

    async def at(self, source: Ledger, moment: Moment) -> Ledger:
        """The ledger as it stood at `moment` (built now if it is not kept)."""
        async with self._lock:
            if moment.position in self._built:
                self._built.move_to_end(moment.position)
                return self._built[moment.position][1]
            folder = tempfile.TemporaryDirectory(prefix="evq-web-travel-")
            try:
                past = await run_in_threadpool(_build, source, moment.position, folder.name)
            except BaseException:
                folder.cleanup()
                raise
            self._built[moment.position] = (folder, past)
            while len(self._built) > KEPT:
                _, (old, _) = self._built.popitem(last=False)
                old.cleanup()
            return past

    def close(self) -> None:
        while self._built:
            _, (folder, _) = self._built.popitem()
            folder.cleanup()


def _build(source: Ledger, position: int, folder: str) -> Ledger:
    if position < 1:
        raise InvalidInput("the ledger held no event yet at that moment: pick a later one")
    past = open_ledger(f"{folder}/at-{position}.db")
    events = source.export()
    try:
        past.import_(itertools.takewhile(lambda item: item.event.position <= position,
                                         events))
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # the export's read transaction, left before its end
    return past
