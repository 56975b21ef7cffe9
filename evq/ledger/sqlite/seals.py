"""The hash chain over the events: how a seal's hash is made. Every commit that appends
events ends with a `seal` event (data {"first": position, "hash": hex}) whose hash covers
the previous seal's hash and every event since it. Checking the chain is `chain.py`.

Two schemes, told apart by the seal event's `v`:
- scheme 2 (`v` = 2, written since schema 4): each event contributes its own hash,
  SHA-256 of its canonical line (`line`), and the seal hashes the previous seal's hash
  (64 hex characters), those 32-byte digests in position order, then the seal's own
  line (with `{"first": N}` as its data, so every field of the seal row is covered
  too). Because an event enters only through its own hash, archiving can keep that hash
  in the ledger (`evq_archived`) and every seal stays recomputable without the archive.
- scheme 1 (`v` = 1, older ledgers): SHA-256 of the previous seal's hash and, for each
  event, a newline and its canonical line. Still verified; a scheme-1 seal over archived
  events can only be recomputed with their archive file.

The chain lives in the append-only log itself, so an event edited, deleted or inserted by
hand (even with the append-only triggers dropped) shows up at its position, and a seal
hash exported earlier shows a truncated or rewritten ledger."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from . import sql

if TYPE_CHECKING:
    pass

GENESIS = "0" * 64
SEAL = "seal"
SCHEME = 2  # the `v` of the seals written now
LEGACY_SCHEME = 1
_sha256 = hashlib.sha256


def line(position: int, at: float, kind: str, job_id: str | None, queue: str | None,
         job: str | None, attempt: int | None, worker: str | None, data: str,
         v: int = 1) -> bytes:
    """One event in the canonical form the chain hashes: its fields joined by the unit
    separator, data as the exact stored text. Unambiguous: names and ids never hold that
    character or are empty, and JSON text never holds a raw control character."""
    return (f"{position}\x1f{at!r}\x1f{kind}\x1f{job_id or ''}\x1f{queue or ''}\x1f"
            f"{job or ''}\x1f{'' if attempt is None else attempt}\x1f{worker or ''}\x1f"
            f"{data}\x1f{v}").encode()


def digest(event_line: bytes) -> bytes:
    """An event's own hash (raw), as a scheme-2 seal takes it."""
    return _sha256(event_line).digest()


def event_hash(row: Sequence[Any]) -> str:
    """The hash of a stored event row (position, at, kind, job_id, queue, job, attempt,
    worker, data, v), in hex: what archiving keeps of an event it removes."""
    return _sha256(line(*row)).hexdigest()


def data_text(first: int, sealed: str) -> str:
    """A seal event's data as stored: the text `dumps({"first": ..., "hash": ...})` gives,
    written directly (it is on every commit's path)."""
    return f'{{"first":{int(first)},"hash":"{sealed}"}}'


def seal_line(position: int, at: float, first: int, v: int = SCHEME,
              extra: Sequence[Any] = (None, None, None, None, None)) -> bytes:
    """The seal event's own line as its hash covers it: its data without the hash.
    `extra` is its job_id, queue, job, attempt and worker as stored (all None when
    evq writes it)."""
    job_id, queue, job, attempt, worker = extra
    return line(position, at, SEAL, job_id, queue, job, attempt, worker,
                f'{{"first":{int(first)}}}', v)


def seal_hash(previous: str, digests: Iterable[bytes], own_line: bytes) -> str:
    """A scheme-2 seal's hash (see the module docstring)."""
    total = _sha256(previous.encode())
    for item in digests:
        total.update(item)
    total.update(own_line)
    return total.hexdigest()


def legacy_hash(previous: str, lines: Iterable[bytes]) -> str:
    """A scheme-1 seal's hash (see the module docstring)."""
    total = _sha256(previous.encode())
    for item in lines:
        total.update(b"\n")
        total.update(item)
    return total.hexdigest()


@attrs.define
class LastSeal:
    """The newest seal a connection wrote. When the next commit on that connection starts
    right after it (no other writer in between), its hash is known without a query:
    positions are never reused and events never change."""

    position: int = 0
    hash: str = GENESIS
    at: float = 0.0  # the seal's time: no later commit may be stamped before it


def previous_hash(conn: sqlite3.Connection, first: int, last: LastSeal | None) -> str:
    if last is not None and last.position == first - 1 and last.position:
        return last.hash
    row = conn.execute(sql.LAST_SEAL).fetchone()
    return str(json.loads(row[1])["hash"]) if row else GENESIS
