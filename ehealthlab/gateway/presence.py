"""Device presence: the retained status topics, recorded in the registry.

A device publishes `{"state": "online"}` retained on its status topic and sets the Last Will
`{"state": "offline"}`, so the broker always holds each device's current state. One thread
subscribes to every status topic with the platform's credentials and records, for each
message, the device's `status`, `status_at` and `last_seen_at` and a `device_status_events`
row (the conformance check reads those). The MQTT network thread only queues messages; the
presence thread writes them and reconnects when the broker goes away.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid

import psycopg
from psycopg_pool import ConnectionPool
from pydantic import ValidationError

from ehealthlab.contract.messages import StatusMessage
from ehealthlab.contract.topics import STATUS_WILDCARD, TopicKind, parse_device_topic
from ehealthlab.errors import EhealthlabError
from ehealthlab.gateway import registry
from ehealthlab.mqtt import BrokerAddress, MqttConnection, ReceivedMessage
from ehealthlab.store.db import Connection

log = logging.getLogger(__name__)

#: how long the thread waits between attempts to reach a broker that went away
RECONNECT_DELAY_S = 2.0


def status_of(payload: bytes) -> StatusMessage | None:
    """The status a payload announces, or None when it does not follow the contract."""
    try:
        return StatusMessage.model_validate_json(payload)
    except ValidationError:
        return None


def record(conn: Connection, message: ReceivedMessage) -> bool:
    """Record one status message; False when it is not a registered device's status."""
    topic = parse_device_topic(message.topic)
    if topic is None or topic.kind is not TopicKind.STATUS or not message.payload:
        return False  # an empty retained payload only clears the topic
    status = status_of(message.payload)
    with conn.transaction():
        return registry.record_status(
            conn,
            topic.device_id,
            status.state if status is not None else None,
            retained=message.retain,
            payload=message.payload,
            received_at=message.received_at,
        )


class Presence:
    """The presence thread: `start()` connects (failing fast), `stop()` ends it cleanly."""

    def __init__(
        self,
        broker: BrokerAddress,
        pool: ConnectionPool[Connection],
        *,
        reconnect_delay_s: float = RECONNECT_DELAY_S,
    ) -> None:
        self._broker = broker
        self._pool = pool
        self._reconnect_delay_s = reconnect_delay_s
        self._messages: queue.Queue[ReceivedMessage | None] = queue.Queue()
        self._stopping = threading.Event()
        self._lost = threading.Event()
        self._connection: MqttConnection | None = None
        self._thread = threading.Thread(target=self._run, name="ehl-presence", daemon=True)

    def start(self) -> Presence:
        self._connection = self._connect()
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._messages.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _connect(self) -> MqttConnection:
        # a fresh client id each time: two API processes must not take over each other
        connection = MqttConnection(
            self._broker,
            f"ehl-presence-{uuid.uuid4().hex[:8]}",
            on_message=self._messages.put,
            on_connection_lost=self._connection_lost,
        )
        connection.connect()
        self._lost.clear()
        try:
            connection.subscribe(STATUS_WILDCARD)
        except EhealthlabError:
            connection.close()
            raise
        return connection

    def _connection_lost(self, reason: str) -> None:
        if not self._stopping.is_set():
            log.warning("presence: lost the broker (%s); reconnecting", reason)
            self._lost.set()
            self._messages.put(None)  # wake the thread

    def _run(self) -> None:
        while not self._stopping.is_set():
            if self._lost.is_set():
                self._reconnect()
                continue
            message = self._messages.get()
            if message is not None:
                self._write(message)

    def _write(self, message: ReceivedMessage) -> None:
        try:
            with self._pool.connection() as conn:
                record(conn, message)
        except psycopg.Error as exc:
            # the broker still holds the retained state: it comes back on the next
            # (re)subscription, so one lost update heals itself
            log.warning("presence: could not record %s: %s", message.topic, exc)

    def _reconnect(self) -> None:
        if self._connection is not None:
            self._connection.drop()
            self._connection = None
        while not self._stopping.wait(self._reconnect_delay_s):
            try:
                self._connection = self._connect()
            except EhealthlabError as exc:
                log.warning("presence: broker still unavailable: %s", exc)
                continue
            log.info("presence: reconnected")
            return
