"""How an ingest worker batches, subscribes and keeps its session, and what it counts.

Apart from the worker's loop so that the command line, the metrics endpoint and the tests
can speak of a worker's configuration and counters without the loop itself.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal

from ehealthlab.contract.topics import INGEST_SHARED_SUBSCRIPTION, READINGS_WILDCARD
from ehealthlab.ingest.alerts import DEFAULT_RULES, AlertRules


@dataclass(frozen=True)
class IngestConfig:
    """How a worker batches and how long the broker keeps its session."""

    batch_max_messages: int = 1000
    batch_max_readings: int = 10_000
    batch_max_wait_s: float = 0.02
    receive_maximum: int = 2000
    session_expiry_s: int = 7 * 24 * 3600
    retry_initial_s: float = 0.25
    retry_max_s: float = 5.0
    rules: AlertRules = DEFAULT_RULES
    drain_timeout_s: float = 30.0
    #: a batch the database has not answered in this long is given up: the connection is
    #: cut, and the batch retried on a new one (a link that swallows packets, or a server
    #: that stopped answering, would otherwise hold the worker for ever: nothing bounds a
    #: statement once sent)
    batch_timeout_s: float = 30.0
    #: "partitioned" (`ehealthlab ingest`'s default): every worker holds a durable ordinary
    #: subscription and keeps the devices of its partition (a hash of device_id mod
    #: `partitions`); a broker restart loses nothing, since Mosquitto 2.0 persists ordinary
    #: subscriptions and not shared ones, and the broker's ehl_ingest_partitions plugin sends
    #: each worker only its partition's messages. "shared": the broker splits messages over
    #: the $share/ingest group, for brokers that keep shared subscriptions across a restart;
    #: it is this class's default because a shared worker's session ends when it stops, which
    #: suits short-lived workers (tests, a demo in one process) (docs/ingest.md).
    subscription: Literal["shared", "partitioned"] = "shared"
    partition: int = 0
    partitions: int = 1

    @property
    def topic_filter(self) -> str:
        return INGEST_SHARED_SUBSCRIPTION if self.subscription == "shared" else READINGS_WILDCARD

    def client_id(self, name: str) -> str:
        """The worker's MQTT client id: its name, and for a partitioned worker its partition
        as ".p<k>of<n>" (from 1), which the broker's partitions plugin reads. A different
        number of partitions is therefore a different set of sessions."""
        if self.subscription == "shared":
            return name
        return f"{name}.p{self.partition + 1}of{self.partitions}"


@dataclass
class WorkerStats:
    """Counters since start, read by the metrics endpoint and the status line."""

    messages: int = 0
    readings: int = 0
    duplicates: int = 0
    rejected: int = 0
    redeliveries: int = 0
    alerts: int = 0
    #: messages of other partitions that the broker sent anyway (no partitions plugin)
    foreign: int = 0
    batches: int = 0
    last_batch_s: float = 0.0
    lag_s: float = 0.0
    db_available: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
