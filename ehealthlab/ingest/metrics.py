"""A worker's own health for Prometheus (`/metrics`) and a status line a minute.

Each worker has its own registry and port, so several workers on one machine are scraped
side by side (worker i of `ehealthlab ingest --workers N --metrics-port P` listens on P+i-1).
"""

from __future__ import annotations

import logging
import threading
import time
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from ehealthlab.ingest.worker import IngestWorker

log = logging.getLogger("ehealthlab.ingest")


class WorkerMetrics:
    """Prometheus view of one worker's counters, refreshed from its stats."""

    def __init__(self, worker: IngestWorker) -> None:
        self.worker = worker
        self.registry = CollectorRegistry()
        labels = {"worker": worker.name}
        self._counters = {
            name: Counter(
                f"ehl_ingest_{name}", help_text, ["worker"], registry=self.registry
            ).labels(**labels)
            for name, help_text in (
                ("messages", "readings messages stored and acknowledged"),
                ("readings", "readings stored"),
                ("duplicates", "readings that arrived again (not stored twice)"),
                ("rejected", "readings and messages rejected, kept with their reason"),
                ("redeliveries", "messages delivered again (same msg_id), logged once"),
                ("alerts", "clinical alerts raised"),
                ("foreign", "other partitions' messages the broker sent anyway (acknowledged)"),
            )
        }
        self._seen = {name: 0 for name in self._counters}
        self.batch_seconds = Histogram(
            "ehl_ingest_batch_seconds", "time to write one batch", ["worker"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.lag_seconds = Gauge(
            "ehl_ingest_lag_seconds", "receive-to-commit time of the last batch's oldest message",
            ["worker"], registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.database_up = Gauge(
            "ehl_ingest_database_up", "1 while the database takes writes", ["worker"],
            registry=self.registry,
        ).labels(**labels)  # fmt: skip

    def refresh(self) -> None:
        stats = self.worker.stats
        with stats.lock:
            current = {name: getattr(stats, name) for name in self._counters}
            last_batch, lag, up = stats.last_batch_s, stats.lag_s, stats.db_available
        for name, value in current.items():
            if value > self._seen[name]:
                self._counters[name].inc(value - self._seen[name])
                self._seen[name] = value
        self.batch_seconds.observe(last_batch)
        self.lag_seconds.set(lag)
        self.database_up.set(1 if up else 0)


def serve_metrics(metrics: WorkerMetrics, port: int) -> WSGIServer:
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    return server


def report_every_minute(
    metrics: WorkerMetrics, stop: threading.Event, period_s: float = 60.0
) -> None:
    """One status line a minute (and metrics refresh every few seconds) until `stop`."""
    last = time.monotonic()
    previous = 0
    while not stop.wait(5.0):
        metrics.refresh()
        if time.monotonic() - last >= period_s:
            stats = metrics.worker.stats
            with stats.lock:
                messages, readings, rejected = stats.messages, stats.readings, stats.rejected
                dups, lag, up = stats.duplicates, stats.lag_s, stats.db_available
            rate = (messages - previous) / (time.monotonic() - last)
            log.info(
                "%s: %.0f msg/s, %d messages, %d readings, %d duplicates, %d rejected, "
                "lag %.3f s, database %s",
                metrics.worker.name, rate, messages, readings, dups, rejected, lag,
                "up" if up else "DOWN",
            )  # fmt: skip
            previous, last = messages, time.monotonic()
