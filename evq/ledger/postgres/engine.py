"""The PostgreSQL engine as one object: the `Ledger` interface over one schema of a
PostgreSQL database, assembled from the parts that implement each side of it."""

from __future__ import annotations

from .admin_side import PgAdminSide
from .audit_side import PgAuditSide
from .producer_side import PgProducerSide
from .runtime import PgRuntime
from .subscriber_side import PgSubscriberSide
from .transfer_side import PgTransferSide


class PostgresLedger(PgRuntime, PgSubscriberSide, PgProducerSide, PgAuditSide,  # type: ignore[misc]
                     PgAdminSide, PgTransferSide):
    """A ledger in a PostgreSQL schema (see evq.ledger.interface.Ledger)."""
