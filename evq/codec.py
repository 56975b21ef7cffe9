"""JSON in and out, and the checks every input passes before anything is written.

Payloads, results and event data are JSON only (no pickle). A value is accepted only if it
round-trips exactly: no NaN/Infinity, no integers beyond 64 bits, string keys only, no lone
surrogates, nothing JSON cannot represent. attrs instances are turned into plain dicts.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from json import encoder as json_encoder
from typing import Any, TypeVar

import attrs

from .errors import InvalidName, InvalidPayload, InvalidTime, PayloadTooLarge

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
# How deep lists and objects may nest in a payload or result. SQLite's JSON functions
# stop at 1,000 levels and Python's recursion near there too; real payloads stay far
# below this.
MAX_DEPTH = 100
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}")

T = TypeVar("T")


def check_name(value: object, what: str) -> str:
    """Return `value` if it is a valid queue/job/worker name, else raise InvalidName."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise InvalidName(
            f"{what} name {value!r} is not valid: use 1 to 128 characters from "
            "letters, digits, '_', '.', ':' and '-', not starting with punctuation "
            "other than '_'"
        )
    return value


def to_jsonable(value: Any, what: str = "payload") -> Any:
    """Check `value` and return its plain-JSON form (attrs instances become dicts)."""
    try:
        return _plain(value, what, "$", 0)
    except _TooDeep as deep:
        if _holds_itself(value):
            raise InvalidPayload(f"{what} contains itself (a list or dict inside itself "
                                 "refers back to it): JSON cannot represent that") from None
        where = deep.path if len(deep.path) <= 40 else deep.path[:40] + "..."
        raise InvalidPayload(f"{what} at {where}: nested more than {MAX_DEPTH} levels "
                             "deep; flatten it or store it elsewhere") from None


class _TooDeep(Exception):
    def __init__(self, path: str) -> None:
        self.path = path


def _holds_itself(value: Any) -> bool:
    """Whether a container is reachable from itself (searched without recursion)."""
    stack: list[tuple[Any, frozenset[int]]] = [(value, frozenset())]
    while stack:
        item, above = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        elif attrs.has(type(item)):
            children = [getattr(item, f.name, None) for f in attrs.fields(type(item))]
        else:
            continue
        if id(item) in above:
            return True
        if len(above) > MAX_DEPTH + 1:
            continue
        path = above | {id(item)}
        stack.extend((child, path) for child in children)
    return False


def _plain(value: Any, what: str, path: str, depth: int) -> Any:
    kind = type(value)
    if kind is str:
        if not value.isascii():
            _check_text(value, what, path)
        return value
    if value is None or kind is bool:
        return value
    if kind is int:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidPayload(
                f"{what} at {path}: integer {value} is outside the 64-bit range JSON "
                "readers agree on; send it as a string"
            )
        return value
    if kind is float:
        if not math.isfinite(value):
            raise InvalidPayload(
                f"{what} at {path}: {value} is not a JSON number; send None or a string"
            )
        return value
    if kind is dict:
        for key in value:
            if type(key) is not str:
                raise InvalidPayload(
                    f"{what} at {path}: key {key!r} is a {type(key).__name__}; JSON "
                    "objects have string keys only, so it would come back changed"
                )
        # Rebuild only when something inside changes (attrs instances, tuples).
        if depth >= MAX_DEPTH:
            raise _TooDeep(path)
        items = {key: _plain(item, what, f"{path}.{key}", depth + 1)
                 for key, item in value.items()}
        for key in items:
            if not key.isascii():
                _check_text(key, what, path)
        return value if all(items[k] is value[k] for k in items) else items
    if kind is list or kind is tuple:
        if depth >= MAX_DEPTH:
            raise _TooDeep(path)
        out = [_plain(item, what, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
        return value if kind is list and all(a is b for a, b in zip(out, value, strict=True)) \
            else out
    if isinstance(value, (str, int, float, dict, list, tuple)):
        # Subclasses (StrEnum, IntEnum, OrderedDict, named tuples) are stored as the plain
        # JSON value they stand for.
        return _plain(_plain_base(value), what, path, depth)
    if attrs.has(kind):
        if depth >= MAX_DEPTH:
            raise _TooDeep(path)
        return {
            field.name: _plain(getattr(value, field.name), what, f"{path}.{field.name}",
                               depth + 1)
            for field in attrs.fields(kind)
        }
    raise InvalidPayload(
        f"{what} at {path}: a {kind.__name__} is not JSON; use dicts, lists, "
        "str, int, float, bool, None or an attrs class"
    )


def _plain_base(value: Any) -> Any:
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return dict(value)
    return list(value)


def storable(text: str) -> bool:
    """Whether UTF-8 can hold `text` (it has no lone surrogate), as every ledger needs."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(text: str, what: str, path: str) -> None:
    if not storable(text):
        raise InvalidPayload(
            f"{what} at {path}: the text holds a lone surrogate, which UTF-8 cannot store")


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# JSONEncoder.encode builds its C encoder again on every call, which is two thirds of
# the cost of encoding a small payload; this one is built once (the same C code, so the
# same text). No circular-reference markers: values are checked trees by now.
_make_c_encoder: Any = getattr(json_encoder, "c_make_encoder", None)
_C_ENCODER: Any = None if _make_c_encoder is None else _make_c_encoder(
    None, _ENCODER.default, json_encoder.encode_basestring, None, ":", ",", False, False,
    False)


def dumps(value: Any) -> str:
    """Compact JSON text of an already-checked value (one shared encoder: json.dumps
    with options would build a new one per call, on the hot path)."""
    if _C_ENCODER is None:
        return _ENCODER.encode(value)
    return "".join(_C_ENCODER(value, 0))


def encode(value: Any, what: str = "payload", limit: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Any:
    """Check a value and its encoded size; return its plain-JSON form."""
    return encode_text(value, what, limit)[0]


def encode_text(value: Any, what: str = "payload", limit: int = DEFAULT_MAX_PAYLOAD_BYTES
                ) -> tuple[Any, str]:
    """Check a value and its encoded size; return its plain-JSON form and its JSON text."""
    plain = to_jsonable(value, what)
    text = dumps(plain)
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > limit:
        raise PayloadTooLarge(
            f"{what} is {size} bytes encoded, over the limit of {limit}; store the data "
            "elsewhere and pass a reference, or raise max_payload_bytes on the Context"
        )
    return plain, text


def decode_as(cls: type[T] | None, value: Any, *, strict: bool = False) -> Any:
    """Rebuild a payload: an attrs class from its dict, anything else as stored. With
    `strict` (at enqueue), a key that is not a field of the class is refused rather than
    dropped, at any depth; stored payloads are read leniently."""
    if cls is None or not attrs.has(cls) or not isinstance(value, dict):
        return value
    attrs.resolve_types(cls)
    fields = attrs.fields(cls)
    if strict:
        unknown = sorted(set(value) - {field.name for field in fields})
        if unknown:
            raise InvalidPayload(
                f"{cls.__name__} has no field {', '.join(map(repr, unknown))} (its fields: "
                f"{', '.join(field.name for field in fields)}); nothing would store it")
    kwargs = {}
    for field in fields:
        if field.name in value:
            item = value[field.name]
            ftype = field.type
            if isinstance(ftype, type) and attrs.has(ftype):
                item = decode_as(ftype, item, strict=strict)
            kwargs[field.name] = item
    return cls(**kwargs)


# The times the ledger holds: from the epoch (1970-01-01T00:00:00Z) to the end of the
# year 9999 (UTC), the range a datetime can show. A time outside it is refused when given,
# and clamped when computed (a retry after a backoff of 10**300 seconds waits forever
# enough at 9999-12-31T23:59:59Z).
EARLIEST_TIME = 0.0
END_OF_TIME = 253402300800.0  # 10000-01-01T00:00:00Z, excluded
LATEST_TIME = END_OF_TIME - 1.0  # 9999-12-31T23:59:59Z


def check_time(value: float, what: str = "run_at", given: object = None) -> float:
    """`value` (epoch seconds) if it lies in the ledger's range of times, else InvalidTime
    naming what was given."""
    if not EARLIEST_TIME <= value < END_OF_TIME:  # NaN fails too
        shown = value if given is None else given
        raise InvalidTime(
            f"{what} {shown!r} is outside the times evq stores: from 1970-01-01T00:00:00Z "
            "to the end of 9999-12-31 (UTC)")
    return value


def clamp_time(value: float) -> float:
    """A computed time brought into the ledger's range (NaN counts as never: the end)."""
    if math.isnan(value) or value > LATEST_TIME:
        return LATEST_TIME
    return max(EARLIEST_TIME, value)


def parse_time(value: object, what: str = "run_at") -> float:
    """A timestamp from a datetime, an ISO-8601 string or epoch seconds, within the
    ledger's range (1970 to the end of 9999, UTC)."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        try:
            stamp = moment.timestamp()
        except (OverflowError, ValueError):  # an offset that leaves the datetime range
            stamp = math.nan
        return check_time(stamp, what, value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidTime(
                f"{what} {value!r} is not an ISO-8601 time (years 1970 to 9999) such as "
                "2026-01-31T12:00:00Z") from None
        try:
            return parse_time(moment, what)
        except InvalidTime:
            raise InvalidTime(
                f"{what} {value!r} is outside the times evq stores: from "
                "1970-01-01T00:00:00Z to the end of 9999-12-31 (UTC)") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise InvalidTime(f"{what} {value!r} is not a finite timestamp")
        return check_time(float(value), what, value)
    raise InvalidTime(
        f"{what} {value!r} is not a time: pass a datetime, an ISO-8601 string or epoch seconds"
    )


def check_delay(value: object, what: str = "delay") -> float:
    """Seconds to wait: a finite, non-negative number (or a timedelta) no longer than the
    ledger's range of times."""
    seconds = getattr(value, "total_seconds", None)
    if callable(seconds):
        value = seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidTime(f"{what} {value!r} is not a number of seconds")
    if not math.isfinite(value) or value < 0:
        raise InvalidTime(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    if value >= END_OF_TIME:
        raise InvalidTime(f"{what} {value!r} seconds reaches past the end of 9999, the last "
                          "time evq stores")
    return float(value)


def time_after(now: float, delay: float, what: str = "delay") -> float:
    """The time `delay` seconds after `now`, refused (InvalidTime) past the end of 9999."""
    when = now + delay
    if not EARLIEST_TIME <= when < END_OF_TIME:
        raise InvalidTime(f"{what} {delay!r} seconds from now reaches past the end of "
                          "9999-12-31 (UTC), the last time evq stores")
    return when


# --- reading back what is stored -------------------------------------------------------
# Readers take any value a row holds (a ledger edited by hand, or written before the time
# range was enforced) without failing: a time beyond what a datetime can show reads as
# the first or last datetime, and one that is not a number at all as the first.
FIRST_DATETIME = datetime.min.replace(tzinfo=UTC)
LAST_DATETIME = datetime.max.replace(tzinfo=UTC)


def stored_datetime(value: object) -> datetime | None:
    """A stored epoch time as a datetime (None stays None; see above for the rest)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return FIRST_DATETIME
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, ValueError, OSError):
        return LAST_DATETIME if value > 0 else FIRST_DATETIME


def stored_json(text: object) -> Any:
    """A stored JSON text as its value; text that is not JSON comes back as the text
    itself (None stays None)."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        return text  # a number where JSON text was expected: that number
    try:
        return json.loads(text)
    except ValueError:  # RecursionError is not one; a stored nesting that deep is not JSON
        return text
    except RecursionError:
        return text


def stored_object(text: object, key: str = "message") -> dict[str, Any] | None:
    """A stored JSON object (an error, an event's data) as a dict; any other value comes
    back wrapped as {key: value} (None stays None)."""
    value = stored_json(text)
    if value is None or isinstance(value, dict):
        return value
    return {key: value}
