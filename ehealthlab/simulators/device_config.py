"""What a simulated device is given: its registration and how it behaves.

`DeviceRegistration` is what the gateway answered when the device was registered (its id and
MQTT credentials); `DeviceConfig` is how the simulated device behaves (clock, units, battery,
faults, publishing window, reconnection). Plain validated values, no I/O: `device.Device`
takes both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ehealthlab.contract.messages import MAX_READINGS
from ehealthlab.errors import InvalidInputError
from ehealthlab.mqtt import BrokerAddress
from ehealthlab.simulators.battery import Battery
from ehealthlab.simulators.faults import FaultShares
from ehealthlab.simulators.payloads import DeviceClock

#: paho gives QoS 1 messages 16-bit ids and stalls silently when they run out
_MAX_IN_FLIGHT = 60_000


@dataclass(frozen=True, slots=True)
class DeviceRegistration:
    """What the gateway gave the device at registration: its id and MQTT credentials."""

    device_id: str
    device_type: str
    host: str
    port: int
    password: str
    username: str | None = None
    client_id: str | None = None
    tls: bool = False

    @classmethod
    def from_api(cls, answer: Mapping[str, Any], device_type: str) -> DeviceRegistration:
        """From the answer of `POST /api/v1/devices` (its type is what was asked for)."""
        mqtt = answer["mqtt"]
        return cls(
            device_id=str(answer["device_id"]),
            device_type=device_type,
            host=str(mqtt["host"]),
            port=int(mqtt["port"]),
            password=str(mqtt["password"]),
            username=str(mqtt["username"]),
            client_id=str(mqtt["client_id"]),
            tls=bool(mqtt.get("tls", False)),
        )

    def broker(self) -> BrokerAddress:
        return BrokerAddress(
            self.host, self.port, self.username or self.device_id, self.password, self.tls
        )


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """How one simulated device behaves; the defaults are a well-behaved device."""

    clock: DeviceClock = field(default_factory=DeviceClock)
    #: metric → accepted unit the device is set to (canonical when absent)
    units: Mapping[str, str] = field(default_factory=dict)
    battery: Battery = field(default_factory=Battery)
    faults: FaultShares = field(default_factory=FaultShares)
    #: QoS 1 messages published and not yet acknowledged, at most
    max_in_flight: int = 1000
    #: readings per message when sending a backlog (the contract allows 500)
    max_batch_readings: int = MAX_READINGS
    #: False: connect only while there is something to send, then disconnect cleanly
    stay_connected: bool = True
    #: > 0: a persistent session, so feedback published while disconnected still arrives
    session_expiry_s: int = 0
    #: how long (simulated) after a failed connection attempt the device tries again
    retry_after: timedelta = timedelta(seconds=30)
    connect_timeout_s: float = 10.0
    #: real seconds the oldest message in flight may wait for its PUBACK before the device
    #: gives the connection up and reconnects (then sends it again): a PUBACK that never
    #: comes on a live connection (bytes lost by a faulty middlebox) would otherwise hold
    #: the in-flight window, and every later reading, for ever
    ack_timeout_s: float = 30.0
    #: feedback messages kept for the caller to read (the newest)
    feedback_kept: int = 1000

    def __post_init__(self) -> None:
        if not 2 <= self.max_in_flight <= _MAX_IN_FLIGHT:
            raise InvalidInputError(f"max_in_flight is from 2 to {_MAX_IN_FLIGHT}")
        if not 1 <= self.max_batch_readings <= MAX_READINGS:
            raise InvalidInputError(f"max_batch_readings is from 1 to {MAX_READINGS}")
        if not self.ack_timeout_s > 0:
            raise InvalidInputError("ack_timeout_s is more than 0")
