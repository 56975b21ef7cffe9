"""Calls that work both plainly and awaited: Joystick's `await job.completed()` and a
sync handler's `job.completed()` (in a thread, with no event loop) do the same thing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Generator
from typing import Any


class Done:
    """The answer of a call that has already done everything: awaiting it returns at
    once (and not awaiting it leaves no coroutine behind to warn about)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator that ends at once


DONE = Done()


class Later:
    """The answer of a call whose effect may take a while: the call itself has asked for
    it; awaiting the answer waits until it is so. The waiting coroutine is made only when
    awaited, so a plain call from any thread is harmless."""

    __slots__ = ("_wait",)

    def __init__(self, wait: Callable[[], Awaitable[None]]) -> None:
        self._wait = wait

    def __await__(self) -> Generator[Any, None, None]:
        return (yield from _as_generator(self._wait()))


def _as_generator(awaitable: Awaitable[None]) -> Generator[Any, None, None]:
    return (yield from awaitable.__await__())


def call_in_loop(loop: asyncio.AbstractEventLoop | None, call: Callable[[], Any]) -> None:
    """Run `call` on `loop`: now when on that loop's thread (or when there is no loop
    yet), else handed to it thread-safely (a `stop()` from a sync handler's thread)."""
    try:
        current = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    if loop is None or current is loop or loop.is_closed():
        call()
    else:
        loop.call_soon_threadsafe(call)
