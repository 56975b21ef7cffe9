"""Time travel: the ledger as it stood at a past moment, for every page to read.

A moment is a time (`at`, as people type it: ISO-8601 or `1h`) or a position (`upto`),
always cut at the end of a commit (its seal). The state then is computed from the
ledger itself, into a new SQLite ledger in a temporary folder: a SQLite ledger replays
its events up to that position (archived events' holes included) as `evq replay --to`
does; a PostgreSQL one is exported up to there and imported, through the same
transitions as the write path, as `evq export | evq import` does (which refuses a cut
before an archive event: that archive's events are not in the prefix). That takes
seconds on a big ledger: a page at a moment being built waits a moment for it, then
answers with how far the build has got (StillBuilding) and asks to be reloaded. A few
moments are kept, and every page at one of them then reads that small ledger. Nothing
is ever written to the real one."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
import time
from collections.abc import Callable

import attrs
from starlette.concurrency import run_in_threadpool

from ..errors import EvqError, InvalidInput, LedgerError, LedgerUnavailable
from ..ledger import Ledger, open_ledger

KEPT = 3  # moments kept built, beyond those in use
BUILDING_AT_ONCE = 2  # builds running at once, at most (each a thread and a copy)
WAIT = 0.1  # seconds a page waits for its moment's build before showing its progress
IN_USE_FOR = 120.0  # seconds after its last page during which a moment is not removed


@attrs.frozen
class Moment:
    """Where a page travels to: a position, with what the user asked for."""

    position: int
    asked: str  # the time or position as given, for the banner and the links
    key: str  # the query parameter it came in (`at` or `upto`)
    time: float | None  # the time asked for (None: a position was)


class StillBuilding(Exception):
    """The ledger of a page's moment is still being built: `done` of `total` events
    replayed so far (0 of 0 before the first report, or on an engine that gives none)."""

    def __init__(self, moment: Moment, done: int, total: int) -> None:
        super().__init__(f"building the ledger as it stood at {moment.asked}")
        self.moment, self.done, self.total = moment, done, total


@attrs.define
class _Progress:
    """How far a build has got: events replayed, of how many (set from its thread)."""

    done: int = 0
    total: int = 0

    def report(self, done: int, total: int) -> None:
        self.done, self.total = done, total


@attrs.define
class _Built:
    folder: tempfile.TemporaryDirectory[str]
    task: asyncio.Task[Ledger]
    used: float
    progress: _Progress


class Travels:
    """The ledgers built for past moments, each built once (pages asking for the same
    moment meanwhile wait for that one build; others are not held up)."""

    def __init__(self) -> None:
        self._built: dict[int, _Built] = {}

    async def at(self, source: Ledger, moment: Moment, wait: float | None = None) -> Ledger:
        """The ledger as it stood at `moment`, built now if it is not kept; StillBuilding
        if the build takes longer than `wait` seconds (WAIT by default) from here. A page
        that goes away does not stop a build: it goes on for the next page to find."""
        built = self._built.get(moment.position)
        if built is None:
            building = sum(not each.task.done() for each in self._built.values())
            if building >= BUILDING_AT_ONCE:
                raise LedgerUnavailable(
                    f"{building} past moments are being built already: open this one "
                    "again once one of them is ready")
            folder = tempfile.TemporaryDirectory(prefix="evq-web-travel-")
            progress = _Progress()
            task = asyncio.get_running_loop().create_task(run_in_threadpool(
                _build, source, moment.position, folder.name, progress.report))
            built = self._built[moment.position] = _Built(folder, task, time.monotonic(),
                                                          progress)
            self._evict()
        built.used = time.monotonic()
        finished, _ = await asyncio.wait({built.task}, timeout=WAIT if wait is None else wait)
        if not finished:
            raise StillBuilding(moment, built.progress.done, built.progress.total)
        try:
            return built.task.result()
        except Exception as exc:
            if self._built.get(moment.position) is built:
                del self._built[moment.position]
                built.folder.cleanup()
            if isinstance(exc, EvqError):
                raise
            raise LedgerError(f"building the ledger as it stood at {moment.asked} failed: "
                              f"{type(exc).__name__}: {exc}") from exc

    def _evict(self) -> None:
        """Remove the moments beyond KEPT, least recently used first, but never one a
        page used lately (it may still be reading) or one still being built."""
        now = time.monotonic()
        idle = sorted((built.used, position) for position, built in self._built.items()
                      if built.task.done() and now - built.used > IN_USE_FOR)
        for _, position in idle[:max(0, len(self._built) - KEPT)]:
            self._built.pop(position).folder.cleanup()

    def close(self) -> None:
        for built in self._built.values():
            built.task.cancel()
            built.folder.cleanup()
        self._built.clear()


def _build(source: Ledger, position: int, folder: str,
           progress: Callable[[int, int], None]) -> Ledger:
    if position < 1:
        raise InvalidInput("the ledger held no event yet at that moment: pick a later one")
    past = open_ledger(f"{folder}/at-{position}.db")
    try:
        source.replay_into(past, position, progress=progress)
        return past
    except InvalidInput:  # another engine: replay writes only its own kind
        pass
    events = source.export()
    try:
        past.import_(itertools.takewhile(lambda item: item.event.position <= position,
                                         events))
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # the export's read transaction, left before its end
    return past
