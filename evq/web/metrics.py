"""`/metrics` in Prometheus's text format (through prometheus_client), read from the
ledger at each scrape, so every process on the ledger is counted.

Now, as the ledger stands:
  evq_jobs{queue,state}               jobs by queue and state
  evq_ledger_head_position            position of the newest event
  evq_subscriber_lag_events{subscriber}  events a durable subscriber has yet to handle
  evq_ledger_bytes, evq_ledger_wal_bytes  the ledger's size, and its WAL (SQLite)

Over the last window, as the overview's figures: the last 15 minutes, or on a busy
ledger only its newest 5,000 events, so a scrape reads a bounded stretch. All are
gauges, not counters: the window slides, so its figures can go down.
  evq_window_seconds                  the window's actual length
  evq_jobs_succeeded_in_window{queue}
  evq_jobs_failed_in_window{queue}    jobs that failed for good or expired
  evq_attempts_in_window{queue}       attempts begun
  evq_attempts_errored_in_window{queue}  attempts that ended in an error
  evq_jobs_succeeded_per_second{queue}   succeeded / window
  evq_attempt_error_ratio{queue}      errored / attempts (absent without attempts)
  evq_job_wait_seconds{queue}         gauge histogram: enqueue (or run_at) to first run
  evq_job_run_seconds{queue}          gauge histogram: an attempt's start to its outcome

Every queue the ledger holds jobs of is listed in the window's figures, at 0 if quiet,
so a queue going idle reads 0 instead of vanishing. In the text format the gauge
histograms are `histogram`s of cumulative `_bucket`s, with `_gcount` and `_gsum` as
separate gauges; the buckets' bounds are BUCKETS, in seconds."""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from .. import stats
from ..ledger.audit_records import StorageSize
from ..ledger.records import SubscriberState
from .pages import FIGURES_FROM, FIGURES_OVER, site_of

# Upper bounds, in seconds, of the wait and run histograms' buckets (+Inf is added).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
           300.0, 900.0)
_WINDOW = "over the last window (evq_window_seconds), not all time"


class _Snapshot(Collector):
    """The figures one scrape read."""

    def __init__(self, counts: Sequence[tuple[str, str, int]], head: int,
                 subscribers: Sequence[SubscriberState], size: StorageSize,
                 window: tuple[dict[str, stats.QueueStats], float]) -> None:
        self.counts, self.head, self.subscribers = counts, head, subscribers
        self.size = size
        self.found, self.seconds = window

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
        yield from self._window()

    def _window(self) -> Iterator[Metric]:
        queues = sorted({queue for queue, _, _ in self.counts} | set(self.found))
        figures = [self.found.get(queue) or stats.QueueStats(queue) for queue in queues]
        yield GaugeMetricFamily(
            "evq_window_seconds", "Length in seconds of the window the *_in_window, "
            "per-second, ratio and wait/run figures cover: the last "
            f"{FIGURES_OVER:.0f} s, or less when that holds over {FIGURES_FROM} events "
            "(then only the newest are read).", value=self.seconds)

        def per_queue(name: str, help_text: str,
                      values: Iterable[tuple[str, float]]) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, f"{help_text}, {_WINDOW}.", labels=["queue"])
            for queue, value in values:
                family.add_metric([queue], value)
            return family

        yield per_queue("evq_jobs_succeeded_in_window", "Jobs that succeeded",
                        ((q.queue, q.succeeded) for q in figures))
        yield per_queue("evq_jobs_failed_in_window",
                        "Jobs that failed for good or expired",
                        ((q.queue, q.failed) for q in figures))
        yield per_queue("evq_attempts_in_window", "Attempts begun",
                        ((q.queue, q.attempts) for q in figures))
        yield per_queue("evq_attempts_errored_in_window",
                        "Attempts that ended in an error (retried or not)",
                        ((q.queue, q.errors) for q in figures))
        if self.seconds > 0:
            yield per_queue("evq_jobs_succeeded_per_second",
                            "Jobs that succeeded per second",
                            ((q.queue, q.succeeded / self.seconds) for q in figures))
        yield per_queue("evq_attempt_error_ratio",
                        "Share of attempts that ended in an error, 0 to 1 (absent for a "
                        "queue without attempts)",
                        ((q.queue, q.errors / q.attempts) for q in figures if q.attempts))
        yield _histogram("evq_job_wait_seconds",
                         "Seconds from a job's enqueue (or later run_at) to the start of "
                         "its first attempt, for first attempts begun",
                         ((q.queue, q.waits) for q in figures))
        yield _histogram("evq_job_run_seconds",
                         "Seconds from an attempt's start to its outcome, for attempts "
                         "ended", ((q.queue, q.runs) for q in figures))


def _histogram(name: str, help_text: str,
               values: Iterable[tuple[str, list[float]]]) -> GaugeHistogramMetricFamily:
    """A gauge histogram by queue: per bucket, how many of the values are at most its
    bound (cumulative, +Inf last), and their sum."""
    family = GaugeHistogramMetricFamily(name, f"{help_text}, {_WINDOW}.", labels=["queue"])
    for queue, seconds in values:
        ordered = sorted(seconds)
        buckets = [(str(bound), float(bisect.bisect_right(ordered, bound)))
                   for bound in BUCKETS]
        buckets.append(("+Inf", float(len(ordered))))
        family.add_metric([queue], buckets, sum(ordered))
    return family


async def endpoint(request: Request) -> Response:
    site = site_of(request)
    counts = await site.read(site.ledger.job_counts)
    head = await site.read(site.ledger.last_position)
    subscribers = await site.read(site.ledger.cursor_states)
    size = await site.read(site.ledger.storage_size)
    now = time.time()  # as the overview: the window ends now, by this machine's clock
    window = await site.read(stats.compute, site.ledger, now - FIGURES_OVER, now,
                             FIGURES_FROM)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(counts, head, subscribers, size, window))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
