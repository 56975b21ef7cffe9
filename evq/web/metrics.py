"""`/metrics` in Prometheus's text format (through prometheus_client): jobs by queue and
state, the ledger's head position and size (and WAL), each durable subscriber's lag,
read from the ledger at each scrape, so every process on the ledger is counted."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from ..ledger.audit_records import StorageSize
from ..ledger.records import SubscriberState
from .pages import site_of


class _Snapshot(Collector):
    """The figures one scrape read."""

    def __init__(self, counts: Sequence[tuple[str, str, int]], head: int,
                 subscribers: Sequence[SubscriberState], size: StorageSize) -> None:
        self.counts, self.head, self.subscribers = counts, head, subscribers
        self.size = size

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("evq_jobs", "Current jobs by queue and state.",
                                 labels=["queue", "state"])
        for queue, state, n in self.counts:
            jobs.add_metric([queue, state], n)
        yield jobs
        yield GaugeMetricFamily("evq_ledger_head_position",
                                "Position of the newest event in the ledger.", value=self.head)
        lag = GaugeMetricFamily("evq_subscriber_lag_events",
                                "Events a durable subscriber has not handled yet.",
                                labels=["subscriber"])
        for sub in self.subscribers:
            lag.add_metric([sub.name], sub.lag)
        yield lag
        yield GaugeMetricFamily("evq_ledger_bytes", "Room the ledger takes, in bytes.",
                                value=self.size.total_bytes)
        if self.size.wal_bytes is not None:
            yield GaugeMetricFamily("evq_ledger_wal_bytes",
                                    "The ledger's write-ahead log not yet checkpointed.",
                                    value=self.size.wal_bytes)


async def endpoint(request: Request) -> Response:
    site = site_of(request)
    counts = await site.read(site.ledger.job_counts)
    head = await site.read(site.ledger.last_position)
    subscribers = await site.read(site.ledger.cursor_states)
    size = await site.read(site.ledger.storage_size)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(counts, head, subscribers, size))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
