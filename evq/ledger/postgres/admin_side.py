"""The looking-after side of the PostgreSQL engine: verify (the append-only triggers, the
hash chain, replay), create or check the schema, and the operator's actions (retry,
cancel, delete), each in one transaction of its own under the append lock."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from ...errors import InvalidInput, LedgerCorrupt
from ..audit_records import ArchiveFile, Exported, LedgerCheck, ReplayCheck, StoredEvent
from ..interface import Ledger
from ..sqlite import chain
from ..sqlite import sql as named
from ..sqlite.admin_side import _GUARDS, AdminSide, VerifyProgress, stage
from . import connection, replay, schema, sql
from .base import PgBase
from .producer_side import write_locked
from .transfer_side import PgTransferSide
from .tx import PgTx

T = TypeVar("T")
_CHECKED_BY = "PostgreSQL (the server keeps its own pages whole)"


class PgAdminSide(AdminSide, PgBase):
    """Verify, replay, migrate, and the operator's writes, on PostgreSQL."""

    # From the audit and transfer sides of the same engine.
    last_position: Callable[..., int]
    export: Callable[[], Iterator[Exported]]

    def verify(self, expect_head: str | None = None, archives: Sequence[ArchiveFile] = (),
               *, progress: VerifyProgress | None = None) -> LedgerCheck:
        with self._checked("verifying") as conn:
            guards = {row[0] for row in conn.execute(named.GUARD_TRIGGERS)}
            found = chain.check(conn, expect_head, archives,  # type: ignore[arg-type]
                                stage(progress, "hash chain"))
        rules_off = tuple(sorted(set(_GUARDS) - guards))
        return LedgerCheck(_CHECKED_BY, rules_off=rules_off, chain=found,
                           replay=self._replayed(stage(progress, "replay")))

    def check_replay(self) -> ReplayCheck:
        return self._replayed(None)

    def _replayed(self, progress: Callable[[int, int], None] | None) -> ReplayCheck:
        with self._checked("replaying") as conn:
            return replay.check(conn, self.target.schema, progress)

    def replay_into(self, target: Ledger, upto: int | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    archived: Mapping[int, tuple[Any, ...]] | None = None,
                    upto_at: float | None = None) -> int:
        if not isinstance(target, PgTransferSide):
            raise InvalidInput(f"cannot replay {self.location} into {target.location}: "
                               "replay writes a new ledger of the same kind (a PostgreSQL "
                               "schema); to change engines, export and import")
        last = upto if upto is not None else 2**62
        total = min(self.last_position(), last)
        restored = {position: StoredEvent._make(row)
                    for position, row in (archived or {}).items() if position <= last}
        if upto_at is not None:  # an archived event after upto_at cuts there too
            later = [position for position, row in restored.items() if row.at > upto_at]
            if later:
                last = min(later) - 1
                restored = {p: row for p, row in restored.items() if p <= last}

        def events() -> Iterator[Exported]:
            pending = sorted(restored)
            cut = last
            for done, item in enumerate(self.export(), 1):
                if item.event.position > last:
                    break
                if upto_at is not None and item.event.at > upto_at:
                    cut = item.event.position - 1
                    break
                while pending and pending[0] < item.event.position:
                    yield Exported(restored[pending.pop(0)])
                yield item
                if progress is not None and done % 5000 == 0:
                    progress(item.event.position, total)
            for position in pending:
                if position <= cut:
                    yield Exported(restored[position])
            if progress is not None:
                progress(total, total)

        try:
            return target.load(events(), check_chain=False)
        except InvalidInput as exc:
            raise LedgerCorrupt(
                f"replaying {self.location} was refused ({exc}): its history holds a "
                "transition that cannot happen (see `evq verify`); nothing was "
                "written") from None

    def migrate(self) -> tuple[int, int]:
        return connection.migrate(self.target)

    def schema_text(self) -> str:
        return schema.schema_sql()

    def _act(self, op: Callable[[PgTx], T]) -> T:
        with self._checked("writing to") as conn:
            return write_locked(conn, op, time.time,
                                sql.BEGIN_LOCKED_NEWEST.format(key=self.target.lock_key),
                                sql.NOTIFY_COMMIT.format(
                                    channel=sql.channel(self.target.schema)))
