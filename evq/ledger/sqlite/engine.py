"""The SQLite engine as one object: the `Ledger` interface over one file, assembled from
the parts that implement each side of it."""

from __future__ import annotations

from .admin_side import AdminSide
from .audit_side import AuditSide
from .producer_side import ProducerSide
from .runtime import RuntimeSide
from .subscriber_side import SubscriberSide
from .transfer_side import TransferSide


class SqliteLedger(RuntimeSide, SubscriberSide, ProducerSide, AuditSide, AdminSide,
                   TransferSide):
    """A SQLite ledger file (see evq.ledger.interface.Ledger)."""
