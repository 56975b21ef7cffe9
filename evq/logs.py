"""evq's loggers: structlog over the standard library's `logging` logger `evq`.

A library must not decide where its logs go. evq never configures structlog or logging:
each logger here wraps `logging.getLogger("evq...")` with processors of its own, so the
application's logging configuration (levels, handlers) decides, and an application that
configured nothing sees warnings and errors only (on stderr, by `logging`'s last resort).
A call below the logger's level stops at the first processor, before anything is
rendered. The message is `event key=value ...`; the same fields travel as a dict in the
record's `evq` attribute for handlers that want them structured.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog

ROOT = "evq"


def _render(logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
    exc_info = event.pop("exc_info", None)
    fields = dict(event)
    name = fields.pop("event", "")
    text = " ".join([str(name), *(f"{key}={value!r}" if isinstance(value, str)
                                   else f"{key}={value}" for key, value in fields.items())])
    kwargs: dict[str, Any] = {"extra": {"evq": {"event": name, **fields}}}
    if exc_info:
        kwargs["exc_info"] = exc_info
    return (text,), kwargs


_PROCESSORS = [structlog.stdlib.filter_by_level, _render]


class _Logger(structlog.stdlib.BoundLogger):
    """structlog's stdlib logger, with debug and info calls (the ones on the hot path)
    asking the stdlib logger's cached level first, so that one nobody reads costs a
    method call and no context copy."""

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.DEBUG):
            return None
        return super().debug(event, *args, **kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.INFO):
            return None
        return super().info(event, *args, **kw)


def get_logger(name: str = ROOT) -> Any:
    """A structlog logger writing to the stdlib logger `name` (under `evq`)."""
    return structlog.wrap_logger(logging.getLogger(name), processors=_PROCESSORS,
                                 wrapper_class=_Logger)
