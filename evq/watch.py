"""Noticing commits made by other connections to the ledger: other processes, or a
caller's own transactions. How is the engine's business (`Ledger.watch_commits`: the
SQLite engine polls the file's data version, which costs microseconds); this starts it
once something needs to know, and stops it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .ledger import Ledger


class CommitWatcher:
    """Calls `on_change()` within `interval` seconds of another connection's commit."""

    def __init__(self, ledger: Ledger, interval: float, on_change: Callable[[], None]
                 ) -> None:
        self._ledger = ledger
        self._interval = interval
        self._on_change = on_change
        self._stop: Callable[[], Awaitable[None]] | None = None

    def start(self) -> None:
        """Start watching (in the running event loop), unless already watching."""
        if self._stop is None:
            self._stop = self._ledger.watch_commits(self._interval, self._on_change)

    async def stop(self) -> None:
        if self._stop is not None:
            stop, self._stop = self._stop, None
            await stop()
