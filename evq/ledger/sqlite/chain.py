"""Checking the hash chain: every seal is recomputed, in position order, from the events as
stored, the hashes archiving kept of the events it removed (`evq_archived`), and the
archive files when given. No seal is ever taken on trust, except a scheme-1 seal (written
by an evq older than schema 4) over archived events whose file was not given: such a
commit is reported as not checked, never as verified.

A gap in the positions is accepted only where an `archive` event after it claims the
position and the ledger kept that event's hash under that archive event (or, for
archive events written before schema 4, which keep no hashes, under a scheme-1 seal).
An archive claim that does not fit (a position still present, a seal, a position at or
after the archive event itself, one claimed twice, one without a kept hash) is a
failure, named by position. With a trusted head (`expect_head`), archive events after it
that claim positions before it are listed: those events' content can only be checked
with their file."""

from __future__ import annotations

import bisect
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ..audit_records import ArchiveFile, ChainCheck, Claim
from ..records import Positions
from . import seals, sql

Span = Positions
_BATCH = 5000


class ChainError(Exception):
    """The chain does not hold at `position` (None: not at one position)."""

    def __init__(self, problem: str, position: int | None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.position = position


def read_claims(rows: Iterable[tuple[int, str]]) -> list[Claim]:
    """The claims of `archive` events given as (position, data text)."""
    claims = []
    for position, data in rows:
        try:
            record = json.loads(data)
            ranges = tuple((int(low), int(high)) for low, high in record["positions"])
            sha256, count = str(record["sha256"]), int(record["events"])
            kept = record.get("kept")
        except (ValueError, TypeError, KeyError, AttributeError):
            raise ChainError(f"the archive event at {position} was edited by hand: its data "
                             "is not what evq writes", position) from None
        claim = Claim(position, ranges, sha256, kept is not None)
        for low, high in ranges:
            if not 1 <= low <= high < position:
                raise ChainError(
                    f"the archive event at {position} claims positions {low}..{high}, which "
                    "it could not have removed: only events before it can be archived",
                    low)
        if sum(high - low + 1 for low, high in ranges) != count or \
                (kept is not None and kept != count):
            raise ChainError(f"the archive event at {position} claims a number of positions "
                             "other than the events it says it moved: edited by hand",
                             position)
        claims.append(claim)
    return claims


def check(conn: sqlite3.Connection, expect_head: str | None = None,
          files: Sequence[ArchiveFile] = (),
          progress: Callable[[int, int], None] | None = None) -> ChainCheck:
    """Recompute the chain over every event, in order, reading in short chunks.

    `expect_head`: a seal hash exported earlier (the head `evq verify` printed then). It
    must still be a seal of the chain: whoever rewrote the ledger before it, or cut it
    short after it, cannot bring it back; events appended since then are fine.
    `files`: archive files whose events are checked against the hashes kept of them.
    `progress(position reached, head position)` hears after each chunk, last with the two
    equal when the walk gets to the end."""
    walk = _Walk(conn, expect_head, files, progress)
    try:
        walk.run()
    except ChainError as exc:
        return walk.result(exc.problem, exc.position)
    return walk.result()


class _Walk:
    """The state of one pass over the chain."""

    def __init__(self, conn: sqlite3.Connection, expect_head: str | None,
                 files: Sequence[ArchiveFile],
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.conn, self.expect_head, self.progress = conn, expect_head, progress
        self.files = {file.sha256: file for file in files}
        self.events = self.seals = self.checked = 0
        self.previous = seals.GENESIS
        self.head_position: int | None = None
        self.unchecked: list[list[int]] = []
        self.blind: list[Span] = []
        self.claims: list[Claim] = []
        self.spans: list[tuple[int, int, Claim]] = []
        self.next_span = 0
        self.kept: Iterator[tuple[int, str, int]] = iter(())
        self.next_kept: tuple[int, str, int] | None = None
        self.scheme_seen = seals.LEGACY_SCHEME
        self._start_commit(1)

    def _start_commit(self, first: int) -> None:
        self.first, self.count = first, 0
        self.rows: list[tuple[Any, ...]] = []
        self.legacy_hash = hashlib.sha256(self.previous.encode())
        self.hash = hashlib.sha256(self.previous.encode())
        self.no_line: int | None = None  # the first event whose line is unknown
        self.no_digest: tuple[int, int] | None = None  # (position, its archive event)
        self.archived_in_commit = False
        self.legacy_archive: int | None = None  # an archive event without kept hashes

    def result(self, problem: str | None = None, position: int | None = None) -> ChainCheck:
        head = self.head_position
        after: list[tuple[int, tuple[Span, ...]]] = []
        if head is not None and problem is None:
            for claim in self.claims:
                if claim.position > head:
                    spans = tuple((low, min(high, head)) for low, high in claim.ranges
                                  if low <= head)
                    if spans:
                        after.append((claim.position, spans))
        return ChainCheck(self.events, self.seals, self.previous, problem, position,
                          self.checked, tuple((low, high) for low, high in self.unchecked),
                          tuple(self.blind), tuple(after))

    # --- the pass ------------------------------------------------------------------------
    def run(self) -> None:
        self._load_claims()
        self.kept = self._kept_rows()
        self.next_kept = next(self.kept, None)
        expected = 1  # the next position
        for row in self._event_rows():
            while expected < row[0]:
                self._gap(expected, row[0])
                expected += 1
            self._present(row)
            expected = row[0] + 1
        if self.next_kept is not None:
            position = self.next_kept[0]
            raise ChainError(f"a hash is kept for position {position} as archived, but the "
                             "ledger has no event there or after it", position)
        if self.count:
            raise ChainError(f"event {self.first} and after are not sealed: inserted by hand",
                             self.first)
        if self.expect_head is not None and self.head_position is None:
            raise ChainError(
                f"the expected head {self.expect_head} is not a seal of this ledger: it was "
                "truncated or rewritten, or the hash is from another ledger", None)

    def _event_rows(self) -> Iterator[tuple[Any, ...]]:
        progress = self.progress
        if progress is None:
            return self._paged(sql.EVENTS_AFTER)
        head = int(self.conn.execute(sql.HEAD_POSITION).fetchone()[0])
        # Events committed while the walk goes on are walked too: the head moves with it.
        return self._paged(sql.EVENTS_AFTER,
                           lambda reached: progress(reached, max(reached, head)))

    def _kept_rows(self) -> Iterator[tuple[int, str, int]]:
        return self._paged(sql.KEPT_HASHES_AFTER)

    def _paged(self, query: str, reached: Callable[[int], None] | None = None
               ) -> Iterator[Any]:
        """The rows of `query` (position > ? ... LIMIT ?, position first), in batches, so
        memory stays bounded whatever the ledger's size; `reached(position)` hears once
        each batch's rows have been taken."""
        after = 0
        while True:
            chunk = self.conn.execute(query, (after, _BATCH)).fetchall()
            yield from chunk
            if reached is not None and chunk:
                reached(chunk[-1][0])
            if len(chunk) < _BATCH:
                return
            after = chunk[-1][0]

    def _load_claims(self) -> None:
        self.claims = read_claims(self.conn.execute(sql.ARCHIVE_EVENTS))
        self.by_position = {claim.position: claim for claim in self.claims}
        self.spans = sorted((low, high, claim) for claim in self.claims
                            for low, high in claim.ranges)
        for (_, high, one), (low, _, other) in zip(self.spans, self.spans[1:], strict=False):
            if low <= high:
                raise ChainError(f"position {low} is claimed by both the archive events at "
                                 f"{one.position} and {other.position}", low)
        for sha256, file in self.files.items():
            ranges = sorted(span for claim in self.claims if claim.sha256 == sha256
                            for span in claim.ranges)
            if not ranges:
                raise ChainError(f"the archive file {file.name} (sha256 {sha256[:16]}...) is "
                                 "not one this ledger recorded: it was changed, or belongs "
                                 "elsewhere", None)
            for position in sorted(file.rows):
                at = bisect.bisect_right(ranges, (position, 2**63)) - 1
                if at < 0 or ranges[at][1] < position:
                    raise ChainError(f"the archive file {file.name} holds an event at "
                                     f"{position}, which its archive event does not claim",
                                     position)

    def _claim_at(self, position: int) -> Claim | None:
        spans = self.spans
        while self.next_span < len(spans) and spans[self.next_span][1] < position:
            self.next_span += 1
        if self.next_span < len(spans) and spans[self.next_span][0] <= position:
            return spans[self.next_span][2]
        return None

    def _kept_at(self, position: int) -> tuple[int, str, int] | None:
        kept = self.next_kept
        if kept is None or kept[0] > position:
            return None
        if kept[0] < position:
            raise ChainError(f"a hash is kept for position {kept[0]}, which no event can "
                             "have", kept[0])
        self.next_kept = next(self.kept, None)
        return kept

    # --- one position --------------------------------------------------------------------
    def _gap(self, position: int, next_present: int) -> None:
        """No event at `position`: it must have been archived."""
        claim, kept = self._claim_at(position), self._kept_at(position)
        if claim is None:
            also = "; a hash is kept for it, but no archive event claims it" if kept else ""
            raise ChainError(f"event {position} is missing (the next one is {next_present})"
                             + also, position)
        if kept is not None and kept[2] != claim.position:
            raise ChainError(f"the hash kept for event {position} names the archive event at "
                             f"{kept[2]}, but the archive event at {claim.position} claims "
                             "it", position)
        if kept is None and claim.keeps_hashes:
            raise ChainError(f"event {position} is missing: the archive event at "
                             f"{claim.position} claims it, but the ledger kept no hash of "
                             "it", position)
        digest = None
        if kept is not None:
            try:
                digest = bytes.fromhex(kept[1])
            except ValueError:
                raise ChainError(f"the hash kept for event {position} is not a hash: "
                                 "edited by hand", position) from None
        event_line = None
        file = self.files.get(claim.sha256)
        if file is not None:
            row = file.rows.get(position)
            if row is None:
                raise ChainError(f"the archive file {file.name} lacks event {position}, "
                                 f"which its archive event (at {claim.position}) claims",
                                 position)
            event_line = seals.line(*row)
            if kept is not None and hashlib.sha256(event_line).hexdigest() != kept[1]:
                raise ChainError(f"archived event {position} in {file.name} does not match "
                                 "the hash the ledger kept of it", position)
            self.checked += 1
        else:
            self._not_checked(position)
        self.archived_in_commit = True
        self._add(position, event_line, digest, claim.position)

    def _present(self, row: tuple[Any, ...]) -> None:
        position = row[0]
        self.events += 1
        claim, kept = self._claim_at(position), self._kept_at(position)
        if claim is not None or kept is not None:
            self._restored(row, claim, kept)
        if row[2] == seals.SEAL:
            self._seal(row)
            return
        if row[2] == "archive" and not self.by_position[position].keeps_hashes:
            self.legacy_archive = position
        event_line = seals.line(*row)
        self.rows.append(row)
        self._add(position, event_line, seals.digest(event_line), None)

    def _restored(self, row: tuple[Any, ...], claim: Claim | None,
                  kept: tuple[int, str, int] | None) -> None:
        """An event present where an archive event claims one, or a hash is kept: only an
        event put back from its archive (`replay --archive`) may be, with its hash kept."""
        position = row[0]
        if claim is None:
            assert kept is not None
            raise ChainError(f"a hash is kept for event {position} as archived by the "
                             f"archive event at {kept[2]}, but no archive event claims it",
                             position)
        if kept is not None and kept[2] == claim.position and kept[1] == seals.event_hash(row):
            return
        what = "the seal" if row[2] == seals.SEAL else "event"
        raise ChainError(f"the archive event at {claim.position} claims {what} {position}, "
                         "which it could not have removed: it is still in the ledger",
                         position)

    def _add(self, position: int, event_line: bytes | None, digest: bytes | None,
             archive: int | None) -> None:
        self.count += 1
        if event_line is None:
            self.no_line = self.no_line or position
        else:
            self.legacy_hash.update(b"\n")
            self.legacy_hash.update(event_line)
        if digest is None:
            assert archive is not None
            self.no_digest = self.no_digest or (position, archive)
        else:
            self.hash.update(digest)

    def _not_checked(self, position: int) -> None:
        if self.unchecked and self.unchecked[-1][1] == position - 1:
            self.unchecked[-1][1] = position
        else:
            self.unchecked.append([position, position])

    # --- a seal --------------------------------------------------------------------------
    def _seal(self, row: tuple[Any, ...]) -> None:
        position, version = row[0], row[9]
        self.seals += 1
        try:
            record = json.loads(row[8])
            stored, covers = str(record["hash"]), int(record["first"])
        except (TypeError, ValueError, KeyError):
            raise ChainError(f"the seal at {position} was edited by hand", position) from None
        if version == seals.SCHEME:
            self._check_current(row, stored, covers)
        elif version == seals.LEGACY_SCHEME:
            self._check_legacy(row, stored, covers)
        else:
            raise ChainError(f"the seal at {position} has an unknown scheme (v {version}): "
                             "written by hand", position)
        self.previous = stored
        if stored == self.expect_head and self.head_position is None:
            self.head_position = position
        self._start_commit(position + 1)

    def _check_current(self, row: tuple[Any, ...], stored: str, covers: int) -> None:
        position = row[0]
        if self.no_digest is not None:
            missing, archive = self.no_digest
            raise ChainError(f"event {missing} is missing: the archive event at {archive} "
                             "that claims it kept no hash of it, which the seal at "
                             f"{position} needs", missing)
        if self.legacy_archive is not None:
            raise ChainError(f"the archive event at {self.legacy_archive} keeps no hashes of "
                             "the events it claims, which only an evq older than its seal "
                             f"(at {position}) would write: written by hand",
                             self.legacy_archive)
        own = seals.seal_line(position, row[1], covers, row[9], row[3:8])
        self.hash.update(own)
        if covers != self.first or row[8] != seals.data_text(covers, stored) \
                or self.hash.hexdigest() != stored:
            self._mismatch(position)
        self.scheme_seen = seals.SCHEME

    def _check_legacy(self, row: tuple[Any, ...], stored: str, covers: int) -> None:
        position = row[0]
        if self.scheme_seen == seals.SCHEME:
            raise ChainError(f"the seal at {position} uses the scheme of evq before schema 4 "
                             "after seals of the current one: written by hand", position)
        if covers != self.first:
            self._mismatch(position)
        if self.no_line is not None:  # archived events without their file
            self.blind.append((self.first, position))
        elif self.legacy_hash.hexdigest() != stored:
            self._mismatch(position)

    def _mismatch(self, position: int) -> None:
        kept = " (or a hash kept of an archived event in it)" if self.archived_in_commit \
            else ""
        raise ChainError(f"the seal at {position} does not match events {self.first}.."
                         f"{position - 1}: an event was edited, deleted or inserted by "
                         f"hand{kept}", _first_changed(self.rows) if self.rows else position)


def _first_changed(rows: list[Any]) -> int:
    """Within a bad seal, the first event that looks edited: its stored data no longer
    parses, or failing that the seal's first event."""
    for row in rows:
        try:
            json.loads(row[8])
        except (TypeError, ValueError):
            return int(row[0])
    return int(rows[0][0])
