"""Device presence: the retained status topics, recorded in the registry by one process.

A device publishes `{"state": "online"}` retained on its status topic and sets the Last Will
`{"state": "offline"}`, so the broker always holds each device's current state. Presence
subscribes to every status topic with the platform's credentials and records, for each
message, the device's `status`, `status_at` and `last_seen_at` and a `device_status_events`
row (the conformance check reads those).

Every API process (`ehealthlab api --workers N`) runs a presence thread, but only one of them
records at a time: the leader, which holds PostgreSQL's session-level advisory lock
`LOCK_KEY` on a connection of its own. Only the leader subscribes (an MQTT 5 shared
subscription would not deliver the retained states a new subscriber needs), and it writes on
that same connection, so a write can only succeed while the lock is held: a leader whose
connection was lost cannot record beside the next one, even before it notices. The others
try for the lock every `RETRY_INTERVAL_S`. A leader that stops releases the lock; one that
dies or loses its connection loses it with its session (PostgreSQL's keepalives bound a
silent network loss); one that loses the broker gives it up. Then another process takes over
within about `RETRY_INTERVAL_S` and, subscribing, reads every device's retained state again
(one more `retained` event per device, as an API restart gives); changes in between arrive
as that retained state, not one by one. The MQTT network thread only queues messages; the
presence thread writes them.

The leader also watches the broker's count of the messages it dropped (broker_watch.py):
one process records it, as it records presence, for the same reasons.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import uuid
from collections.abc import Callable

import psycopg
from pydantic import ValidationError

from ehealthlab.contract.messages import StatusMessage
from ehealthlab.contract.topics import STATUS_WILDCARD, TopicKind, parse_device_topic
from ehealthlab.errors import EhealthlabError, PermissionDeniedError, ServiceUnavailableError
from ehealthlab.gateway import broker_watch, device_registry
from ehealthlab.mqtt import BrokerAddress, MqttConnection, ReceivedMessage
from ehealthlab.store.db import Connection, connect_kept_alive, first_line

log = logging.getLogger(__name__)

#: the advisory lock whose holder records presence (b"ehl-pres"); locks are per database
LOCK_KEY = 0x65686C2D70726573
#: how often a follower tries for the lock, a leader checks its connection, and a process
#: that lost the broker or PostgreSQL tries again: about the longest a fail-over takes
RETRY_INTERVAL_S = 2.0
CONNECT_TIMEOUT_S = 5


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
        return device_registry.record_status(
            conn,
            topic.device_id,
            status.state if status is not None else None,
            retained=message.retain,
            payload=message.payload,
            received_at=message.received_at,
        )


def lock_ids(key: int) -> tuple[int, int]:
    """The (classid, objid) under which pg_locks shows a bigint advisory lock key."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


def application_name(host: str, pid: int) -> str:
    """How the lock's session names itself, so that an operator sees who records presence."""
    return f"ehl-presence {host}:{pid}"[:63]  # PostgreSQL keeps 63 bytes


def lock_holder(conn: Connection) -> str | None:
    """The application name of the session recording presence in this database, if any."""
    classid, objid = lock_ids(LOCK_KEY)
    row = conn.execute(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
        "   AND l.classid = %s::oid AND l.objid = %s::oid"
        "   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (classid, objid),
    ).fetchone()
    return None if row is None else str(row[0])


class LockLostError(ServiceUnavailableError):
    """The lock's session is gone: another process may be recording presence now."""


class _LockSession:
    """The connection that holds the lock, and the only one the leader records on."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._conn: Connection | None = None

    def try_acquire(self) -> bool:
        """Whether this session holds the lock now (connecting first if needed)."""
        try:
            if self._conn is None:
                self._conn = self._open()
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        except psycopg.Error as exc:
            self.close()
            raise ServiceUnavailableError(f"cannot reach PostgreSQL ({first_line(exc)})") from None
        return bool(row and row[0])

    def check(self) -> None:
        """Raise LockLostError when the session (and with it the lock) is gone."""
        try:
            self._on_session(lambda conn: conn.execute("SELECT 1"))
        except psycopg.Error as exc:  # the session lives on, and so does the lock
            log.warning("presence: checking the lock's session: %s", exc)

    def record(self, message: ReceivedMessage) -> None:
        """Record on the lock's session: a lost session cannot write, a lost lock neither."""
        try:
            if message.topic == broker_watch.DROPPED_TOPIC:
                self._on_session(
                    lambda conn: broker_watch.record(conn, message.payload, message.received_at)
                )
            else:
                self._on_session(lambda conn: record(conn, message))
        except psycopg.Error as exc:
            # the broker still holds the retained state, and republishes its counter every
            # sys_interval: the next one brings it back, so one lost update heals itself
            log.warning("presence: could not record %s: %s", message.topic, exc)

    def release(self) -> None:
        """Give the lock up, keeping the session for the next try (closing it if it fails)."""
        if self._conn is None:
            return
        try:
            self._conn.execute("SELECT pg_advisory_unlock_all()")
        except psycopg.Error:
            self.close()

    def close(self) -> None:
        """End the session, which releases the lock."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _on_session(self, statement: Callable[[Connection], object]) -> None:
        conn = self._conn
        if conn is None:
            raise LockLostError("presence: no database session")
        try:
            statement(conn)
        except psycopg.Error as exc:
            if not (conn.broken or conn.closed):
                raise
            self.close()
            raise LockLostError(f"presence: lost PostgreSQL ({first_line(exc)})") from None

    def _open(self) -> Connection:
        # keepalives on both ends: a silent network loss ends the session (and frees the
        # lock) on the server, and fails the leader's next statement, within seconds
        return connect_kept_alive(
            self._url,
            application_name(socket.gethostname(), os.getpid()),
            connect_timeout=CONNECT_TIMEOUT_S,
        )


class Presence:
    """The presence thread: `start()` contends once and starts it, `stop()` ends it cleanly
    (giving the lock up, so another process takes over at once)."""

    def __init__(
        self,
        broker: BrokerAddress,
        database_url: str,
        *,
        retry_interval_s: float = RETRY_INTERVAL_S,
    ) -> None:
        self._broker = broker
        self._lock = _LockSession(database_url)
        self._retry_interval_s = retry_interval_s
        self._messages: queue.Queue[ReceivedMessage | None] = queue.Queue()
        self._stopping = threading.Event()
        self._broker_lost: str | None = None  # why, set by the network thread
        self._connection: MqttConnection | None = None  # set while leading
        self._thread = threading.Thread(target=self._run, name="ehl-presence", daemon=True)

    def start(self) -> Presence:
        """Fail fast when PostgreSQL, or the broker of a process that leads at once, cannot
        be reached (an API that cannot work should not start)."""
        try:
            self._contend()
        except EhealthlabError:
            self._close()
            raise
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._messages.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._close()  # never started, or already closed by the thread: both harmless

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def leading(self) -> bool:
        """Whether this process holds the lock and is subscribed (it records presence)."""
        return self._connection is not None

    def _contend(self) -> None:
        """Lead when the lock is free: take it, then subscribe (or give it back)."""
        if not self._lock.try_acquire():
            return
        try:
            self._connection = self._subscribe()
        except EhealthlabError:
            self._lock.release()
            raise
        log.info("presence: this process records presence (it holds the lock)")

    def _subscribe(self) -> MqttConnection:
        # a fresh client id each time: two API processes must not take over each other
        connection = MqttConnection(
            self._broker,
            f"ehl-presence-{uuid.uuid4().hex[:8]}",
            on_message=self._messages.put,
            on_connection_lost=self._connection_lost,
        )
        self._broker_lost = None
        connection.connect()
        try:
            connection.subscribe(STATUS_WILDCARD)
        except EhealthlabError:
            connection.close()
            raise
        try:
            connection.subscribe(broker_watch.DROPPED_TOPIC)
        except PermissionDeniedError as exc:  # presence still works: say what is missing
            log.warning("presence: not watching the broker's dropped messages: %s", exc)
        return connection

    def _connection_lost(self, reason: str) -> None:
        self._broker_lost = reason
        self._messages.put(None)  # wake the thread

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                if self.leading:
                    self._lead()
                elif not self._stopping.wait(self._retry_interval_s):
                    try:
                        self._contend()
                    except EhealthlabError as exc:
                        log.warning("presence: not recording: %s", exc)
        finally:
            self._close()

    def _lead(self) -> None:
        """Write one message, or, when none came, act on a lost broker or check the lock."""
        try:
            message = self._messages.get(timeout=self._retry_interval_s)
        except queue.Empty:
            message = None
        try:
            if message is not None:
                self._lock.record(message)
                return
            if self._stopping.is_set():
                return
            if self._broker_lost is not None:
                log.warning("presence: lost the broker (%s); giving the lock up", self._broker_lost)
                self._step_down()
                return
            self._lock.check()
        except LockLostError as exc:
            log.warning("%s; no longer recording", exc)
            self._step_down()

    def _step_down(self) -> None:
        """Stop recording: unsubscribe, give the lock up, forget what the old term queued."""
        connection, self._connection = self._connection, None
        if connection is not None:
            if connection.is_connected:
                connection.close()
            else:
                connection.drop()
        self._lock.release()
        self._broker_lost = None
        while True:
            try:
                self._messages.get_nowait()
            except queue.Empty:
                break

    def _close(self) -> None:
        self._step_down()
        self._lock.close()
