"""Times as people type them, for the CLI and the dashboard alike: ISO-8601, or how long
ago (`90s`, `15m`, `1h`, `2d`), as epoch seconds."""

from __future__ import annotations

import re
import time

from . import codec
from .errors import InvalidTime

_AGO = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def moment(text: str, what: str) -> float:
    """A time the user typed: ISO-8601, or how long ago (`90s`, `15m`, `1h`, `2d`)."""
    ago = _AGO.fullmatch(text.strip())
    if ago is not None:
        return codec.check_time(time.time() - float(ago[1]) * _UNIT[ago[2]], what, text)
    try:
        return codec.parse_time(text, what)
    except InvalidTime as exc:
        raise InvalidTime(f"{exc}; or say how long ago, such as 90s, 15m, 1h or 2d"
                          ) from None


def is_ago(text: str) -> bool:
    """Whether a typed time says how long ago (`1h`), so that it means another moment
    each time it is read."""
    return _AGO.fullmatch(text.strip()) is not None
