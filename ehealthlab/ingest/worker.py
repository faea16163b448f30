"""The ingest worker: broker → validation → store → acknowledgement → feedback.

Messages come from an MQTT 5 subscription (partitioned or shared) with a persistent session
and manual acknowledgement, read by the worker's own thread (`MqttConsumer`: no network
thread, no hand-over queue). A batch is validated, written in one transaction (readings,
rejections, duplicates, message log; devices' last-seen just after) and only then
acknowledged, so a worker killed at any point loses nothing: the broker redelivers what was
not acknowledged and the store's idempotency key collapses what had been committed. The
broker never has more than `receive_maximum` unacknowledged messages out to a worker, which
bounds memory while the database is away; the worker retries with backoff and resumes by
itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import orjson
import psycopg

from ehealthlab.contract.topics import feedback_topic
from ehealthlab.errors import EhealthlabError, ServiceUnavailableError
from ehealthlab.ingest.batching import batch_wait_left, fill_batch
from ehealthlab.ingest.pipeline import (
    UNKNOWN_DEVICE,
    JudgedMessage,
    KnownDevice,
    Settled,
    judge,
    partition_of,
    refuse,
)
from ehealthlab.ingest.store_batch import LastSeenWrites, store_judged
from ehealthlab.ingest.watchdog import BatchWatchdog
from ehealthlab.ingest.worker_config import IngestConfig, WorkerStats
from ehealthlab.mqtt import BrokerAddress, MqttConsumer, ReceivedMessage
from ehealthlab.records import record
from ehealthlab.settings import Settings
from ehealthlab.store.db import Connection, connect
from ehealthlab.store.readings import ReadingWriter

log = logging.getLogger("ehealthlab.ingest")


@record
class _Delivery:
    """A message and the connection generation that delivered it (acks go back to it)."""

    generation: int
    message: ReceivedMessage


class IngestWorker:
    """One consumer of the shared subscription; run several side by side."""

    def __init__(self, settings: Settings, name: str | None = None,
                 config: IngestConfig | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.name = name or f"ingest-{uuid.uuid4().hex[:8]}"
        self.config = config or IngestConfig()
        self.stats = WorkerStats()
        self._generation = 0
        self._warned_unstamped = False
        self._warned_foreign = False
        self._mqtt: MqttConsumer | None = None
        self._db: Connection | None = None
        self._writer: ReadingWriter | None = None
        self._last_seen = LastSeenWrites()
        self._watchdog: BatchWatchdog[Connection] | None = None
        self._devices: dict[str, KnownDevice] = {}
        #: set once the worker is subscribed (again, after a reconnect): from then on what
        #: devices publish is kept for the ingest group, whatever happens to this worker
        self.subscribed = threading.Event()

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set; then finish the batch in hand and return."""
        log.info("%s: starting", self.name)
        if not self.settings.broker_receive_stamp:
            log.info(
                "%s: the broker is declared without the receive-stamp plugin "
                "(EHEALTHLAB_BROKER_RECEIVE_STAMP=false): receive times are this worker's read "
                "times, and no stamp a message carries is believed",
                self.name,
            )
        try:
            while not stop.is_set():
                self._ensure_broker(stop)
                batch = self._collect(stop)
                if batch:
                    self._store(batch, stop)
            self._drain()
        finally:
            self._close()
            log.info("%s: stopped", self.name)

    def retire(self) -> None:
        """End this worker's session for good: take no more messages, store what the broker
        kept for it, then end the session. For a partitioned worker whose partition count is
        being changed (its client id names the old count), once the new set runs; a stopped
        partitioned worker otherwise keeps its session, and the broker keeps queueing for
        it until the session expires."""
        stop = threading.Event()
        try:
            self._ensure_broker(stop)
            self._drain(end_session=True)
        finally:
            self._close()
        log.info("%s: retired", self.name)

    def _drain(self, *, end_session: bool | None = None) -> None:
        """A clean stop: take no more messages, store and acknowledge every one already
        delivered (for at most `drain_timeout_s`), then end the session so the broker sends
        this worker's share to the others instead of keeping it for a worker that may not
        come back. Whatever could not be stored in time stays with the broker: the session
        is then kept. A partitioned worker keeps its session (nobody else takes its
        partition) unless `end_session` says otherwise."""
        connection = self._mqtt
        if connection is None:
            return
        if not connection.is_connected:
            # lost at this very moment: store what it had delivered before stopping, as a
            # reconnection does (the broker may have forgotten it: see
            # _keep_what_was_delivered); the session is kept, for whatever was not stored
            with self._giving_up_after(self.config.drain_timeout_s) as give_up:
                self._keep_what_was_delivered(give_up)
            connection.close()
            self._mqtt = None
            return
        if end_session is None:
            end_session = self.config.subscription == "shared"
        if not end_session:
            # nobody else takes this partition: keep the session, so the broker holds its
            # messages until the worker is back
            connection.close()
            self._mqtt = None
            return
        try:
            connection.unsubscribe(self.config.topic_filter)
        except EhealthlabError as exc:
            log.warning("%s: could not unsubscribe (%s); the session is kept", self.name, exc)
            return
        stored_all = True
        with self._giving_up_after(self.config.drain_timeout_s) as give_up:
            while batch := self._collect(give_up, wait_s=0.3):
                stored_all = self._store(batch, give_up) and stored_all
        connection.close(end_session=stored_all)
        self._mqtt = None

    @staticmethod
    @contextlib.contextmanager
    def _giving_up_after(seconds: float) -> Iterator[threading.Event]:
        """An event set once `seconds` have passed: a stop's bound on storing what is held."""
        give_up = threading.Event()
        timer = threading.Timer(seconds, give_up.set)
        timer.daemon = True
        timer.start()
        try:
            yield give_up
        finally:
            timer.cancel()

    @property
    def held_messages(self) -> int:
        """Messages read from the broker and not yet taken into a batch (any thread may ask):
        at most twice the receive maximum, which Mosquitto 2.0.11 overshoots (its inflight
        accounting was fixed in 2.0.13); past it nothing is read and TCP holds the broker."""
        connection = self._mqtt
        return connection.held if connection is not None else 0

    def _collect(self, stop: threading.Event, wait_s: float = 0.2) -> list[_Delivery]:
        first = self._next(wait_s)
        if first is None:
            return []
        return fill_batch(
            first,
            lambda: self._next(0.0),
            lambda delivery: delivery.message.payload.count(b'"seq"'),
            wait_s=batch_wait_left(first.message, self.config.batch_max_wait_s, datetime.now(UTC)),
            max_messages=self.config.batch_max_messages,
            max_readings=self.config.batch_max_readings,
        )

    def _next(self, wait_s: float) -> _Delivery | None:
        """The next message of this worker's partition, waiting up to `wait_s`."""
        connection = self._mqtt
        if connection is None:
            time.sleep(wait_s)
            return None
        partition, partitions = self.config.partition, self.config.partitions
        partitioned = self.config.subscription == "partitioned" and partitions > 1
        deadline = time.monotonic() + wait_s
        while True:
            message = connection.receive(max(0.0, deadline - time.monotonic()))
            if message is None:
                return None
            if partitioned and partition_of(message.topic, partitions) != partition:
                connection.ack(message)  # another worker's device: it has its own copy
                self._count_foreign()
                continue
            if not message.broker_stamped and not self._warned_unstamped:
                self._warned_unstamped = True
                if self.settings.broker_receive_stamp:  # checked at start: lost since
                    log.warning(
                        "%s: a message came without the broker's receive stamp (plugin "
                        "ehl_receive_stamp no longer loaded?): it gets this worker's read "
                        "time, which includes time spent in the broker",
                        self.name,
                    )
            return _Delivery(self._generation, message)

    def _idle(self, seconds: float) -> None:
        """Wait, keeping the broker connection alive (and reading what it sends, up to the
        bound) while the database is away."""
        connection = self._mqtt
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if connection is None or not connection.is_connected:
                time.sleep(remaining)
                return
            connection.pump(remaining)

    def _store(self, batch: list[_Delivery], stop: threading.Event) -> bool:
        """Write a batch, retrying while the database is away; then ack and answer. False
        when `stop` came before it could be stored (the broker keeps it, unacknowledged)."""
        delay = self.config.retry_initial_s
        refused: str | None = None
        while True:
            try:
                if refused is None:
                    settled = self._write_batch(batch)
                else:
                    settled = self._write_one_by_one(batch, refused)
                break
            except (psycopg.OperationalError, ServiceUnavailableError) as exc:
                self._lost_database(exc)
            except Exception as exc:  # a worker must not die on one message
                # refused for its content, or a defect of ours: the batch goes one by one and
                # the message that trips it is kept whole as a dead letter with the error
                if refused is None:
                    if not isinstance(exc, psycopg.Error):
                        log.exception("%s: unexpected error on a batch", self.name)
                    refused = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    continue
                log.exception("%s: even one by one the batch fails; retrying", self.name)
            if stop.is_set():
                log.warning("%s: stopping with %d messages unstored; the broker keeps them",
                            self.name, len(batch))  # fmt: skip
                return False
            self._idle(delay)
            delay = min(delay * 2, self.config.retry_max_s)
        if not self.stats.db_available:
            log.warning("%s: database is back; resuming", self.name)
            self.stats.db_available = True
        self._acknowledge(batch, settled)
        return True

    def _write_one_by_one(
        self, batch: Sequence[_Delivery], error: str
    ) -> list[tuple[JudgedMessage, Settled]]:
        """The batch was refused for its content (not for the database being away): write
        its messages one at a time, and keep any that is still refused as a dead letter.
        A database that goes away meanwhile raises, and the caller retries it all (what
        was already committed collapses on the idempotency key)."""
        log.error("%s: a batch was refused (%s); writing its messages one by one", self.name, error)
        self._reset_database()
        settled: list[tuple[JudgedMessage, Settled]] = []
        for delivery in batch:
            try:
                settled.extend(self._write_batch([delivery]))
            except (psycopg.OperationalError, ServiceUnavailableError):
                raise
            except Exception as exc:  # isolate the one message that trips it
                self._reset_database()
                reason = (
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                )
                settled.extend(self._write_batch([delivery], refused=reason))
        return settled

    def _cut(self, conn: Connection) -> None:
        """The batch watchdog's move when a batch is overdue: shut the connection's socket down, so
        the call waiting on it fails at once and the batch is retried on a new connection."""
        log.warning(
            "%s: the database has not answered a batch in %.0f s; cutting the connection "
            "and trying again",
            self.name,
            self.config.batch_timeout_s,
        )
        with self.stats.lock:
            self.stats.db_available = False
        with contextlib.suppress(OSError, psycopg.Error):
            cut = socket.socket(fileno=os.dup(conn.pgconn.socket))
            try:
                cut.shutdown(socket.SHUT_RDWR)
            finally:
                cut.close()

    def _reset_database(self) -> None:
        if self._db is not None:
            self._db.close()
        self._db = None
        self._writer = None

    def _lost_database(self, exc: Exception) -> None:
        if self.stats.db_available:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.warning("%s: database unavailable (%s); holding messages unacknowledged, "
                        "retrying", self.name, reason)  # fmt: skip
            self.stats.db_available = False
        self._reset_database()

    # -- the store -----------------------------------------------------------------------

    def _ensure_database(self) -> tuple[Connection, ReadingWriter]:
        if self._db is None or self._db.closed or self._writer is None:
            self._db = connect(self.settings)
            self._writer = ReadingWriter(self._db)
        return self._db, self._writer

    def _device(self, device_id: str) -> KnownDevice | None:
        known = self._devices.get(device_id)
        if known is not None:
            return known
        conn, _ = self._ensure_database()
        row = conn.execute("SELECT device_type, simulated FROM devices WHERE device_id = %s",
                           (device_id,)).fetchone()  # fmt: skip
        conn.rollback()
        if row is None:
            return None
        self._devices[device_id] = KnownDevice(str(row[0]), bool(row[1]))
        return self._devices[device_id]

    def _write_batch(
        self, batch: Sequence[_Delivery], refused: str | None = None
    ) -> list[tuple[JudgedMessage, Settled]]:
        conn, writer = self._ensure_database()
        started = time.monotonic()
        if self._watchdog is None:  # a new one after _close, should the worker go on
            self._watchdog = BatchWatchdog(
                self.config.batch_timeout_s, self._cut, name=f"{self.name}-watchdog"
            )
        watchdog = self._watchdog
        watchdog.arm(conn)
        try:
            if refused is None:
                judged = [judge(d.message, self._device) for d in batch]
            else:
                judged = [
                    refuse(d.message, f"the store could not keep it: {refused}") for d in batch
                ]
            stored = store_judged(conn, writer, judged, self.config.rules, self._last_seen)
        finally:
            watchdog.disarm()
        elapsed = time.monotonic() - started
        oldest = min(d.message.received_at for d in batch)
        lag = (datetime.now(UTC) - oldest).total_seconds()
        with self.stats.lock:
            self.stats.lag_s = lag
            self.stats.batches += 1
            self.stats.messages += len(batch)
            self.stats.readings += stored.result.inserted
            self.stats.duplicates += len(stored.result.duplicates)
            self.stats.rejected += stored.rejected
            self.stats.redeliveries += stored.redeliveries
            self.stats.last_batch_s = elapsed
            self.stats.alerts += stored.alerts
        return [(m.judged, m.settled) for m in stored.messages]

    # -- the broker ----------------------------------------------------------------------

    def _ensure_broker(self, stop: threading.Event) -> None:
        if self._mqtt is not None and self._mqtt.is_connected:
            return
        self.subscribed.clear()
        if self._mqtt is not None:
            log.warning("%s: broker connection lost; reconnecting", self.name)
            self._keep_what_was_delivered(stop)
            self._mqtt.close()
            self._mqtt = None
        delay = self.config.retry_initial_s
        while not stop.is_set():
            self._generation += 1
            connection = MqttConsumer(
                BrokerAddress.from_settings(self.settings),
                self.config.client_id(self.name),
                clean_start=False,
                session_expiry_s=self.config.session_expiry_s,
                receive_maximum=self.config.receive_maximum,
                max_held=2 * self.config.receive_maximum,
                trust_receive_stamp=self.settings.broker_receive_stamp,
            )
            try:
                connection.connect()
                # Always (re)subscribe: a kept session may lack the subscription (a first
                # subscribe that timed out, a leftover session of the other mode), and a worker
                # without it would silently lose its partition. After a broker restart
                # Mosquitto 2.0.11 then delivers a partitioned worker's messages twice
                # (measured); they collapse on the idempotency key.
                connection.subscribe(self.config.topic_filter, qos=1)
            except EhealthlabError as exc:
                log.warning("%s: broker unavailable (%s); retrying", self.name, exc)
                connection.close()
                time.sleep(delay)
                delay = min(delay * 2, self.config.retry_max_s)
                continue
            self._mqtt = connection
            self.subscribed.set()
            return

    def _keep_what_was_delivered(self, stop: threading.Event) -> None:
        """Store the messages a lost connection had delivered and the worker not yet taken.
        The broker may not have them any more: Mosquitto persists only every
        `autosave_interval`, so a broker that crashed forgot what it had sent since. If it
        did keep them, it sends them again and they collapse on the idempotency key."""
        held = self._mqtt.held if self._mqtt is not None else 0
        if held:
            log.warning("%s: storing the %d message(s) the lost connection had delivered",
                        self.name, held)  # fmt: skip
        while batch := self._collect(stop, wait_s=0.0):
            if not self._store(batch, stop):
                return

    def _count_foreign(self) -> None:
        with self.stats.lock:
            self.stats.foreign += 1
        if not self._warned_foreign:
            self._warned_foreign = True
            log.warning(
                "%s: the broker sends this worker other partitions' messages (plugin "
                "ehl_ingest_partitions not loaded before dynamic security): each message "
                "travels to every worker; nothing is lost",
                self.name,
            )

    def _acknowledge(self, batch: list[_Delivery],
                     settled: list[tuple[JudgedMessage, Settled]]) -> None:  # fmt: skip
        connection = self._mqtt
        if connection is None or not connection.is_connected:
            return  # nothing to acknowledge to; feedback is advice, and the data are safe
        connection.ack_all(d.message for d in batch if d.generation == self._generation)
        for judged, verdict in settled:
            if (
                verdict.feedback is not None
                and judged.device_id != UNKNOWN_DEVICE
                and not judged.platform_failure
            ):
                try:
                    connection.publish_nowait(
                        feedback_topic(judged.device_id),
                        orjson.dumps(verdict.feedback.model_dump(mode="json")),
                        qos=1,
                    )
                except EhealthlabError as exc:  # feedback is advice; the data are safe
                    log.warning("%s: feedback to %s not sent: %s", self.name, judged.device_id, exc)
        connection.flush()  # the batch's acknowledgements and feedback, in one write

    def _close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        if self._mqtt is not None:
            self._mqtt.close()
            self._mqtt = None
        if self._db is not None:
            self._db.close()
            self._db = None
