"""What the platform's MQTT clients share: addresses, received messages, receive stamps,
errors, and how a paho client and its CONNECT are made.

paho-mqtt is imported in this package only (`ehealthlab.mqtt`): everything else speaks to the
broker through `MqttConnection` or `MqttConsumer`, gets messages as frozen `ReceivedMessage`
values, and sees broker refusals as the platform's own errors, never paho's return codes.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ehealthlab.errors import EhealthlabError, ServiceUnavailableError
from ehealthlab.mqtt.publish_decoder import DecodedPublish, UnusualPacketError, decode_publish
from ehealthlab.records import record
from ehealthlab.settings import Settings

DEFAULT_TIMEOUT_S = 10.0
# the user property our broker plugin (ehealthlab/stack/plugins/ehl_receive_stamp.c) appends:
# the broker's receive time in milliseconds since the epoch; the last one of a message counts
RECEIVE_STAMP_PROPERTY = "ehl-received-at"
# what a simulated device (our simulators) says the receive time is in simulated time; only
# honoured for devices registered as simulated (a publisher's word, not the broker's)
SIMULATED_RECEIVE_PROPERTY = "ehl-simulated-received-at"


class MqttError(EhealthlabError):
    """The broker did not do what was asked (timeout, lost connection, refusal)."""


class ConnectionLostError(MqttError):
    """The connection went before the broker answered: the broker closed it (a kick by
    another connection with the same client id or a change of the client's roles, a broker
    going away), or it was already closed when the operation was asked."""


_T = TypeVar("_T")

#: paho's answers to an operation asked of a client whose connection is gone
LOST_CONNECTION = frozenset({MQTTErrorCode.MQTT_ERR_NO_CONN, MQTTErrorCode.MQTT_ERR_CONN_LOST})

#: how often, and how far apart, an operation the broker dropped is tried again
DROPPED_ATTEMPTS = 5
DROPPED_PAUSE_S = 0.1


def again_when_dropped(operation: Callable[[], _T]) -> _T:
    """`operation`, tried again (up to DROPPED_ATTEMPTS times, pausing 0.1, 0.2 … s) while
    the broker drops its connection: another process of the platform giving the platform's
    client its role disconnects every connection of that client (an API's workers and
    ingest starting together do it), one being made included."""
    for attempt in range(1, DROPPED_ATTEMPTS):
        try:
            return operation()
        except ConnectionLostError:
            time.sleep(DROPPED_PAUSE_S * attempt)
    return operation()


class PacketTooLargeError(MqttError):
    """A publication bigger than the broker's Maximum Packet Size (sent in its CONNACK).

    Refused before sending: the broker would close the connection without a reason, and the
    client's resend of it after reconnecting would close it again, forever.
    """


def _variable_byte_integer_size(value: int) -> int:
    size = 1
    while value >= 128:
        value //= 128
        size += 1
    return size


def publish_packet_size(
    topic: str, payload: bytes, qos: int, properties: Properties | None = None
) -> int:
    """The bytes of an MQTT 5 PUBLISH packet: what a broker's Maximum Packet Size counts."""
    properties_size = len(properties.pack()) if properties is not None else 1  # type: ignore[no-untyped-call]
    remaining = 2 + len(topic.encode()) + (2 if qos > 0 else 0) + properties_size + len(payload)
    return 1 + _variable_byte_integer_size(remaining) + remaining


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerAddress:
        """The platform's own client (the gateway's administrative credentials)."""
        host, port = settings.require_mqtt()
        password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
        return cls(host, port, settings.mqtt_username, password, settings.mqtt_tls)

    def as_user(self, username: str, password: str) -> BrokerAddress:
        return BrokerAddress(self.host, self.port, username, password, self.tls)


@record
class ReceivedMessage:
    """A message as it arrived, before anything else touches it.

    `received_at` is when the broker received it when the broker stamps messages (our plugin),
    else when this client read it; `broker_stamped` says which. They differ by the time the
    message waited in the broker (a subscriber down, slow or restarting).
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    received_at: datetime
    broker_stamped: bool = False
    #: the publisher's claim of a simulated receive time (see SIMULATED_RECEIVE_PROPERTY)
    simulated_received_at: datetime | None = None


def _milliseconds(value: str) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value) / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return None


def broker_receive_time(user_properties: list[tuple[str, str]] | None) -> datetime | None:
    """The broker's receive stamp among a message's user properties (the last one), if any.

    The broker appends its stamp after whatever the publisher sent, so a publisher cannot
    forge it: an earlier property of the same name is the publisher's and is ignored.
    """
    for name, value in reversed(user_properties or ()):
        if name == RECEIVE_STAMP_PROPERTY:
            return _milliseconds(value)
    return None


def simulated_receive_time(user_properties: list[tuple[str, str]] | None) -> datetime | None:
    """A simulated device's claimed receive time (milliseconds since the epoch), if any."""
    for name, value in user_properties or ():
        if name == SIMULATED_RECEIVE_PROPERTY:
            return _milliseconds(value)
    return None


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


MessageHandler = Callable[[ReceivedMessage], None]


class DecodingClient(paho.Client):
    """paho's client with a faster and more faithful PUBLISH decoder (`publish_decoder`).

    When `on_decoded_publish` is set, QoS 0 and 1 PUBLISH packets go to it decoded by
    `publish_decoder` instead of through paho's `MQTTMessage` and `Properties`: 38 of paho's
    40 µs a message here, and a U+FEFF in a user property no longer drops the connection.
    paho keeps no state for these packets; it acknowledges QoS 1 at once unless asked for
    manual acknowledgement, and so does this. QoS 2 and unusual packets still go paho's way.
    """

    on_decoded_publish: Callable[[DecodedPublish], None] | None = None

    def _handle_publish(self) -> MQTTErrorCode:
        header = self._in_packet["command"]
        handler = self.on_decoded_publish
        if (
            handler is None
            or header & 0x06 == 0x04  # QoS 2: paho keeps it until PUBREL
            or self._protocol != MQTTProtocolVersion.MQTTv5
        ):
            return super()._handle_publish()
        try:
            decoded = decode_publish(header, self._in_packet["packet"])
        except UnusualPacketError:
            return super()._handle_publish()
        handler(decoded)
        if decoded.qos == 1 and not self._manual_ack:
            return self._send_puback(decoded.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS


#: how long a close waits for the broker to close its side after ours, then closes anyway
CLOSE_FLUSH_S = 2.0
_DRAIN_SIZE = 256 * 1024


def close_gracefully(sock: Any, pending: bytes = b"", timeout_s: float = CLOSE_FLUSH_S) -> None:
    """Send `pending`, half-close, read until the broker closes its side (or `timeout_s`
    passes), then close.

    A socket closed while bytes from the peer wait unread in it is reset (RST), not closed,
    and a reset throws away what this side had written and the peer had not received yet:
    the DISCONNECT and the acknowledgements behind it when the broker is slow to read. paho
    closes its socket right after writing DISCONNECT, whatever it has not read. Reading to
    the end first leaves nothing unread, so the close is an orderly FIN after the data
    (tests/test_mqtt_graceful_close.py shows both)."""
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(OSError, ValueError):
        sock.settimeout(timeout_s)
        if pending:
            sock.sendall(pending)
        sock.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(_DRAIN_SIZE):
                break
    sock.close()


class GracefulSocket:
    """paho's socket, closed by `close_gracefully`; everything else is the socket's own."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def close(self) -> None:
        close_gracefully(self._sock)

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def __getattr__(self, name: str) -> Any:  # recv, send, setblocking, pending, shutdown...
        return getattr(self._sock, name)


class GracefulClient(DecodingClient):
    """A `DecodingClient` whose socket closes gracefully (`close_gracefully`); `_create_socket`
    is paho's own (2.x) seam between connecting and talking."""

    def _create_socket(self) -> Any:
        return GracefulSocket(super()._create_socket())


def new_client(
    broker: BrokerAddress,
    client_id: str,
    *,
    manual_ack: bool,
    will: Will | None = None,
    client_class: type[DecodingClient] = DecodingClient,
) -> DecodingClient:
    """A paho MQTT 5 client for `broker`, not yet connected, that never reconnects by itself
    (the owner decides when, and resubscribes)."""
    client = client_class(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5,
        manual_ack=manual_ack,
        reconnect_on_failure=False,
    )
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
    if will is not None:
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    return client


def connect_properties(session_expiry_s: int, receive_maximum: int | None) -> Properties:
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = session_expiry_s
    if receive_maximum is not None:
        # the broker sends at most this many unacknowledged QoS 1 messages: with
        # acknowledgement after commit, it bounds what a slow consumer holds in memory
        properties.ReceiveMaximum = receive_maximum
    return properties


def unreachable(broker: BrokerAddress, exc: OSError) -> ServiceUnavailableError:
    """The error for a broker that cannot be reached, saying what to do about it."""
    return ServiceUnavailableError(
        f"cannot reach the MQTT broker at {broker.host}:{broker.port} "
        f"({exc.strerror or exc}); start it with `ehealthlab stack up` or fix "
        "EHEALTHLAB_MQTT_HOST/EHEALTHLAB_MQTT_PORT"
    )


def received_message(msg: paho.MQTTMessage, trust_receive_stamp: bool) -> ReceivedMessage:
    """paho's message as the platform's value (see `received`); for what `DecodingClient`
    leaves to paho."""
    return received(
        msg.topic,
        bytes(msg.payload),
        qos=msg.qos,
        retain=bool(msg.retain),
        mid=msg.mid,
        user_properties=getattr(msg.properties, "UserProperty", None),
        trust_receive_stamp=trust_receive_stamp,
    )


def received_publish(publish: DecodedPublish, trust_receive_stamp: bool) -> ReceivedMessage:
    """A decoded PUBLISH as the platform's value (see `received`)."""
    return received(
        publish.topic,
        publish.payload,
        qos=publish.qos,
        retain=publish.retain,
        mid=publish.mid,
        user_properties=publish.user_properties,
        trust_receive_stamp=trust_receive_stamp,
    )


def received(
    topic: str,
    payload: bytes,
    *,
    qos: int,
    retain: bool,
    mid: int,
    user_properties: list[tuple[str, str]] | None,
    trust_receive_stamp: bool,
) -> ReceivedMessage:
    """A delivered message as the platform's value, with its receive time: the broker's
    stamp when it is trusted and present, else now."""
    stamped = broker_receive_time(user_properties) if trust_receive_stamp else None
    return ReceivedMessage(  # by position: one a message
        topic,
        payload,
        qos,
        retain,
        mid,
        stamped or datetime.now(UTC),  # received_at
        stamped is not None,  # broker_stamped
        simulated_receive_time(user_properties),  # simulated_received_at
    )
