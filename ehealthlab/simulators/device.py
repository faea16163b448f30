"""A simulated device: a real MQTT client with its own credentials, a clock, a battery and a
store-and-forward buffer on disk, driven by simulated time.

The caller decides what happens and when: `take(measurement)` when the patient measures,
`pump(now, link_up)` as often as it likes (the broadband model says whether the link is up).
The device stamps readings with its own clock, keeps them on disk with the next `seq`
before anything touches the network, and publishes them oldest first at QoS 1, forgetting a
message only when the broker acknowledges it. It never reads the wall clock itself, so an
accelerated or backfill run can drive it; the network I/O is real.

Many devices can be driven from one loop: `take` and `pump` never wait on the network except
to connect (one CONNACK and one SUBACK on a connection's first pump). Each connected device
does hold one network thread, paho's (see `MqttConnection`), and three file descriptors;
paho's select() fails past descriptor 1023, so one process keeps at most about 300 devices
connected (measured limit: 337). A runner bounds that with `DeviceConfig.stay_connected=False`,
`disconnect()` or `close()` (docs/simulator-devices.md).

What a device is given lives in device_config.py (`DeviceRegistration`, `DeviceConfig`), its
battery in battery.py; this module is the device's behaviour over the buffer and MQTT.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from pydantic import ValidationError

from ehealthlab.contract.messages import FeedbackMessage, StatusMessage
from ehealthlab.contract.topics import feedback_topic, readings_topic, status_topic
from ehealthlab.errors import EhealthlabError
from ehealthlab.mqtt import (
    SIMULATED_RECEIVE_PROPERTY,
    MqttConnection,
    MqttError,
    ReceivedMessage,
    Will,
)
from ehealthlab.simulators.battery import USED_KEY, BatteryState
from ehealthlab.simulators.buffer import StoreAndForward
from ehealthlab.simulators.device_config import DeviceConfig, DeviceRegistration
from ehealthlab.simulators.faults import apply_fault, choose_fault
from ehealthlab.simulators.measurement import Measurement
from ehealthlab.simulators.payloads import ReadingsBuilder, readings_message

log = logging.getLogger(__name__)

ONLINE = StatusMessage(state="online").payload()
OFFLINE = StatusMessage(state="offline").payload()


@dataclass(frozen=True, slots=True)
class Taken:
    """What the device recorded of one measurement: its readings' seqs and its own `at`."""

    seqs: range
    at: str


class _InFlight(NamedTuple):
    mid: int
    msg_id: str
    #: readings it carries (0 for a faulty device's second copy: they are counted once)
    readings: int
    #: time.monotonic() when it was published (the PUBACK deadline runs from it)
    sent: float


class Device:
    """One simulated device over its state directory (a new object over the same directory
    resumes its `seq`, battery and buffer: a restarted simulator loses nothing it took).

    Use from one thread; `feedback()` may be read from any.
    """

    def __init__(
        self,
        registration: DeviceRegistration,
        state_dir: Path,
        config: DeviceConfig | None = None,
    ) -> None:
        self.registration = registration
        self.config = config or DeviceConfig()
        self.device_id = registration.device_id
        self._builder = ReadingsBuilder(
            registration.device_type, self.config.clock, self.config.units
        )
        self._buffer = StoreAndForward(state_dir, registration.device_id)
        self._readings_topic = readings_topic(self.device_id)
        self._status_topic = status_topic(self.device_id)
        self._feedback_topic = feedback_topic(self.device_id)
        self._connection: MqttConnection | None = None
        self._in_flight: collections.deque[_InFlight] = collections.deque()
        self._in_flight_readings = 0
        #: readings not yet acknowledged, kept in memory so an idle pump reads no file
        self._pending = self._buffer.pending_readings()
        self._battery = BatteryState.load(self._buffer)
        #: last seq published on the current connection; the next message starts after it
        self._sent_through = 0
        self._retry_at: datetime | None = None
        self._feedback: collections.deque[FeedbackMessage] = collections.deque(
            maxlen=self.config.feedback_kept
        )
        #: the most messages ever in flight at once (the window's bound holds)
        self.peak_in_flight = 0
        #: why the last connection attempt or publication failed, if one did
        self.last_error: str | None = None
        #: connections made (a reconnection after an outage counts)
        self.connections = 0

    # -- what the caller sees -------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._connection.is_connected

    @property
    def dead(self) -> bool:
        """The battery is empty and has not been recharged."""
        return self._battery.dead_since is not None

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def next_seq(self) -> int:
        return self._buffer.next_seq

    def pending_readings(self) -> int:
        """Readings taken that the broker has not acknowledged yet (in flight included)."""
        return self._pending

    def pending_seqs(self) -> list[int]:
        return self._buffer.pending_seqs()

    def feedback(self) -> list[FeedbackMessage]:
        """What the platform said about messages with rejected readings, oldest first."""
        return list(self._feedback)

    # -- measuring ------------------------------------------------------------------------

    def take(
        self,
        measurement: Measurement,
        now: datetime | None = None,
        *,
        marks: Mapping[str, str] | None = None,
    ) -> Taken | None:
        """Record a measurement: stamp it with the device clock, give its readings the next
        seqs and keep them on disk. None when the battery is empty (nothing is kept) or the
        measurement had no finite value. `now` (default: the measurement's time) is the
        simulated time the battery is judged at. `marks` (see `mark`) are kept in the same
        transaction as the readings: a runner's progress cannot lag behind what was taken."""
        now = measurement.taken_at if now is None else now
        if not self._battery_alive(now, measuring=True):
            return None
        used = self._battery.used + 1
        meta = {f"mark:{k}": v for k, v in (marks or {}).items()}
        if self.config.battery.limited:
            meta[USED_KEY] = str(used)
        readings = self._buffer.append(
            lambda first: self._builder.readings(measurement, first), meta or None
        )
        if not readings:
            return None
        self._battery.used = used
        self._pending += len(readings)
        return Taken(range(readings[0]["seq"], readings[-1]["seq"] + 1), readings[0]["at"])

    def mark(self, name: str, value: str) -> None:
        """Keep a note in the device's state (a runner's progress: how far it got)."""
        self._buffer.set(f"mark:{name}", value)

    def marked(self, name: str) -> str | None:
        return self._buffer.get(f"mark:{name}")

    def recharge(self, now: datetime) -> None:
        """A charged battery: the device runs again (and reconnects on the next pump)."""
        self._battery = BatteryState(charged_at=now, used=0, dead_since=None)
        self._battery.save(self._buffer)
        self._retry_at = None

    # -- the network ----------------------------------------------------------------------

    def pump(
        self,
        now: datetime,
        link_up: bool = True,
        *,
        wall_now: datetime | None = None,
        simulated_received_at: datetime | None = None,
    ) -> None:
        """Do what the device would do now: collect acknowledgements, and publish more of
        the buffer while the link is up; drop the connection when it is not.

        `now` is the simulated true time. `wall_now` is the real time the messages leave,
        when it differs (accelerated and backfill runs): the platform computes the device's
        clock offset from `sent_at` against its own receive time, so `sent_at` is the wall
        clock plus this device's clock error at `now`.

        `simulated_received_at` instead states the receive time in simulated time on every
        message published now (the platform believes it from devices registered as
        simulated): `sent_at` then stays on the simulated clock.
        """
        if not self._battery_alive(now, measuring=False):
            return
        if not link_up:
            if self._connection is not None:
                self._let_go(abruptly=True)
            return
        if self._connection is not None and not self._connection.is_connected:
            self.last_error = "the broker closed the connection"
            self._let_go(abruptly=True)
        if self._connection is None:
            wanted = self.config.stay_connected or self._pending > 0
            if not wanted or (self._retry_at is not None and now < self._retry_at):
                return
            if not self._connect(now):
                return
        self._collect_acks()
        self._publish_more(now, wall_now, simulated_received_at)
        if not self.config.stay_connected and not self._in_flight and self._pending == 0:
            self.disconnect()

    def drain(
        self,
        now: datetime,
        *,
        wall_now: datetime | None = None,
        simulated_received_at: datetime | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        """Pump, with the link up, until the broker has acknowledged everything buffered,
        waiting on acknowledgements rather than spinning (tests; the end of a backfill).
        Raises MqttError when that does not happen within `timeout_s` (real seconds)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.pump(now, True, wall_now=wall_now, simulated_received_at=simulated_received_at)
            if not self._in_flight and self._pending == 0:
                return
            if self._connection is None or time.monotonic() > deadline:
                raise MqttError(
                    f"{self.device_id}: {self._pending} readings not "
                    f"delivered ({self.last_error or 'no acknowledgement in time'})"
                )
            self._collect_acks(wait_s=min(1.0, max(0.0, deadline - time.monotonic())))

    def drop(self) -> None:
        """Lose the connection abruptly (no DISCONNECT: the broker sends the Last Will)."""
        if self._connection is not None:
            self._let_go(abruptly=True)

    def disconnect(self) -> None:
        """Say offline and disconnect cleanly; the buffer keeps what was not acknowledged."""
        if self._connection is not None:
            self._let_go(abruptly=False)

    def close(self) -> None:
        """Disconnect cleanly (status offline); the state stays on disk for a later object."""
        self.disconnect()

    # -- inside ---------------------------------------------------------------------------

    def _connect(self, now: datetime) -> bool:
        persistent = self.config.session_expiry_s > 0
        connection = MqttConnection(
            self.registration.broker(),
            self.registration.client_id or self.device_id,
            clean_start=not persistent,
            session_expiry_s=self.config.session_expiry_s,
            will=Will(self._status_topic, OFFLINE),
            on_message=self._on_message,
            max_inflight=self.config.max_in_flight,
        )
        try:
            connection.connect(self.config.connect_timeout_s)
            connection.publish_nowait(self._status_topic, ONLINE, retain=True, track=False)
            connection.subscribe(self._feedback_topic, timeout=self.config.connect_timeout_s)
        except EhealthlabError as exc:
            connection.drop()
            self.last_error = str(exc)
            self._retry_at = now + self.config.retry_after
            log.info("%s could not connect: %s", self.device_id, exc)
            return False
        self._connection = connection
        self._retry_at = None
        self._sent_through = 0
        self.connections += 1
        return True

    def _let_go(self, *, abruptly: bool) -> None:
        connection = self._connection
        if connection is None:
            return
        self._collect_acks()  # what arrived before the end still counts
        if abruptly:
            connection.drop()
        else:
            try:
                if connection.is_connected:
                    connection.publish(
                        self._status_topic,
                        OFFLINE,
                        retain=True,
                        timeout=self.config.connect_timeout_s,
                    )
            except EhealthlabError as exc:
                self.last_error = str(exc)
            connection.close()
        self._connection = None
        self._in_flight.clear()  # their readings stay buffered and go again, same msg_id
        self._in_flight_readings = 0
        self._sent_through = 0

    def _collect_acks(self, wait_s: float = 0.0) -> None:
        connection = self._connection
        if connection is None:
            return
        delivered: list[str] = []
        refused = overdue = False
        while self._in_flight:
            head = self._in_flight[0]
            try:
                accepted = connection.wait_for(head.mid, timeout=wait_s)
            except MqttError:
                # not acknowledged yet, or the connection is gone; long overdue on a live
                # connection: give it up, and the next pump reconnects and sends again
                if time.monotonic() - head.sent > self.config.ack_timeout_s:
                    self.last_error = (
                        f"no PUBACK for message {head.msg_id} within "
                        f"{self.config.ack_timeout_s:g} s"
                    )
                    overdue = True
                break
            wait_s = 0.0
            self._in_flight.popleft()
            self._in_flight_readings -= head.readings
            if accepted:
                delivered.append(head.msg_id)
            else:
                refused = True
                self.last_error = f"the broker refused message {head.msg_id}"
                break
        self._pending -= self._buffer.delivered(delivered)
        if refused:  # not authorised any more (revoked?): stop, try again later
            self._let_go(abruptly=True)
        elif overdue:
            self._drop_overdue()

    def _drop_overdue(self) -> None:
        """Drop a connection whose oldest message is long overdue (no _let_go: that would
        collect acknowledgements again, and find the same one overdue)."""
        connection = self._connection
        if connection is None:
            return
        connection.drop()
        self._connection = None
        self._in_flight.clear()  # their readings stay buffered and go again, same msg_id
        self._in_flight_readings = 0
        self._sent_through = 0

    def _publish_more(
        self, now: datetime, wall_now: datetime | None, simulated_received_at: datetime | None
    ) -> None:
        connection = self._connection
        room = self.config.max_in_flight - len(self._in_flight)
        unsent = self._pending - self._in_flight_readings
        if connection is None or room <= 0 or unsent <= 0:
            return
        batches = self._buffer.next_batches(
            self._sent_through,
            room,
            max_readings=self.config.max_batch_readings,
            sent_at=self._builder.sent_at(wall_now or now, clock_at=now),
        )
        if not batches:
            return
        stamp: tuple[tuple[str, str], ...] = ()
        if simulated_received_at is not None:
            milliseconds = round(simulated_received_at.timestamp() * 1000)
            stamp = ((SIMULATED_RECEIVE_PROPERTY, str(milliseconds)),)
        for batch in batches:
            message = readings_message(batch.msg_id, batch.sent_at, batch.readings)
            payloads = apply_fault(choose_fault(self.config.faults, batch.msg_id), message)
            if len(payloads) > room:
                break
            try:
                for copy, payload in enumerate(payloads):
                    mid = connection.publish_nowait(
                        self._readings_topic, payload, user_properties=stamp
                    )
                    readings = 0 if copy else len(batch.readings)
                    self._in_flight.append(_InFlight(mid, batch.msg_id, readings, time.monotonic()))
                    self._in_flight_readings += readings
            except MqttError as exc:
                self.last_error = str(exc)
                self._let_go(abruptly=True)
                return
            room -= len(payloads)
            self._sent_through = batch.last_seq
        self.peak_in_flight = max(self.peak_in_flight, len(self._in_flight))

    def _on_message(self, message: ReceivedMessage) -> None:
        # on paho's network thread: parse and keep, nothing more
        if message.topic != self._feedback_topic:
            return
        try:
            self._feedback.append(FeedbackMessage.model_validate_json(message.payload))
        except ValidationError:
            log.warning("%s: unreadable feedback %r", self.device_id, message.payload[:200])

    # -- battery --------------------------------------------------------------------------

    def _battery_alive(self, now: datetime, *, measuring: bool) -> bool:
        battery = self.config.battery
        if not battery.limited:
            return True
        state = self._battery
        if state.dead_since is not None:
            if battery.recharge_after is None or now < state.dead_since + battery.recharge_after:
                return False
            self.recharge(state.dead_since + battery.recharge_after)
            state = self._battery
        if state.charged_at is None:  # first use: as good as charged now
            state.charged_at = now
            state.save(self._buffer)
        empty = (
            battery.capacity_days is not None
            and now - state.charged_at >= timedelta(days=battery.capacity_days)
        ) or (
            measuring
            and battery.capacity_measurements is not None
            and state.used >= battery.capacity_measurements
        )
        if empty:
            state.dead_since = now
            state.save(self._buffer)
            self.drop()
            return False
        return True
