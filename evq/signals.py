"""Stopping on SIGINT and SIGTERM, and serving workers and orchestrators together.

An event loop has one handler per signal, so each runner that installed its own would
replace the previous one's. Instead every runner that asks (`run(handle_signals=True)`)
joins one registry per loop: one signal stops all of them. `serve()` runs several
runners until a signal (or until they all stop)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from .errors import InvalidInput
from .logs import get_logger

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_log = get_logger("evq.signals")


class _Registry:
    """The runners of one loop that stop on a signal, and the signals installed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.stoppers: dict[object, Callable[[], object]] = {}
        self.installed: list[signal.Signals] = []

    def install(self) -> None:
        for sig in SIGNALS:
            # Not on the main thread, or not on this platform: stop() is still there.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self.loop.add_signal_handler(sig, self.fire, sig)
                self.installed.append(sig)

    def uninstall(self) -> None:
        for sig in self.installed:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self.loop.remove_signal_handler(sig)
        self.installed.clear()

    def fire(self, sig: signal.Signals) -> None:
        _log.info("evq.signal_received", signal=sig.name, stopping=len(self.stoppers))
        for stop in list(self.stoppers.values()):
            stop()


_registries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Registry] = (
    weakref.WeakKeyDictionary())


def stop_on_signals(stop: Callable[[], object]) -> Callable[[], None]:
    """Call `stop()` on SIGINT or SIGTERM, along with every other runner of this loop
    that asked; returns the function that withdraws it (the last one out removes the
    signal handlers)."""
    loop = asyncio.get_running_loop()
    registry = _registries.get(loop)
    if registry is None:
        registry = _registries[loop] = _Registry(loop)
    token = object()
    registry.stoppers[token] = stop
    if not registry.installed:
        registry.install()

    def withdraw() -> None:
        registry.stoppers.pop(token, None)
        if not registry.stoppers:
            registry.uninstall()
            _registries.pop(loop, None)

    return withdraw


class Runner(Protocol):
    """A worker or an orchestrator: something that runs until stopped."""

    async def run(self, *, handle_signals: bool = ...) -> Any: ...

    def stop(self) -> Any: ...


async def serve(*runners: Runner, handle_signals: bool = True) -> None:
    """Run workers and orchestrators together until they stop: with handle_signals (the
    default) one SIGINT or SIGTERM stops every one of them gracefully. If one of them
    fails, the others are stopped and its error is raised once they have."""
    if not runners:
        raise InvalidInput("serve() needs at least one worker or orchestrator, e.g. "
                           "evq.serve(ctx.worker(), ctx.orchestrator())")
    for runner in runners:
        if not callable(getattr(runner, "run", None)) or not callable(
                getattr(runner, "stop", None)):
            raise InvalidInput(f"serve() runs workers and orchestrators, got "
                               f"{type(runner).__name__}")
    tasks = [asyncio.ensure_future(runner.run(handle_signals=handle_signals))
             for runner in runners]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        if not all(task.done() for task in tasks):
            for runner in runners:
                runner.stop()
        # Shielded: a cancelled serve() still lets every runner finish its shutdown.
        outcomes = await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
