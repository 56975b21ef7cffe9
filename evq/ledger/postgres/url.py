"""What a `postgresql://` ledger URL names: the server to connect to (libpq's own
parameters, passed on as given), the schema evq's tables live in (`?schema=`, default
`evq`), and the URL as it may be shown to people and logs (its password replaced)."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import attrs

from ...errors import InvalidInput

DEFAULT_SCHEMA = "evq"
RESERVED = "evq_scratch_replay"  # the scratch ledger replay folds into (replay.py)
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@attrs.frozen
class Target:
    """One ledger on a PostgreSQL server."""

    conninfo: str  # what psycopg connects with (may hold a password: never shown)
    schema: str
    shown: str  # the URL with its password replaced, for messages and logs

    @property
    def lock_key(self) -> int:
        """The advisory lock that orders this ledger's appends (one per schema, so two
        ledgers on one server do not wait for each other)."""
        digest = hashlib.sha256(f"evq:append:{self.schema}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    @property
    def migrate_key(self) -> int:
        digest = hashlib.sha256(f"evq:migrate:{self.schema}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)


def redact(url: str) -> str:
    """`url` with any password replaced by `***` (also one given as `?password=`)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"//[^@/]*@", "//***@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = [(k, "***" if k.lower() == "password" else v)
             for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    shown_query = urlencode(query, safe="*", quote_via=quote)
    return urlunsplit((parts.scheme, netloc, parts.path, shown_query, parts.fragment))


def parse(url: str) -> Target:
    """The ledger `url` names; InvalidInput (password never shown) if it is not one."""
    shown = redact(url)
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError as exc:
        raise InvalidInput(f"{shown} is not a PostgreSQL URL ({exc}); give "
                           "postgresql://user@host:5432/database") from None
    schemas = [value for key, value in query if key == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not _SCHEMA_NAME.fullmatch(schema) or schema == RESERVED:
        raise InvalidInput(
            f"schema {schema!r} in {shown} is not a schema name evq uses: give lower-case "
            "letters, digits and underscores, starting with a letter (default 'evq'; "
            f"{RESERVED!r} is evq's own)")
    rest = urlencode([(key, value) for key, value in query if key != "schema"],
                     quote_via=quote)
    conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment))
    return Target(conninfo, schema, shown)
