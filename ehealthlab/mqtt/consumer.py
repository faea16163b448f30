"""A subscriber driven from its owner's thread, for ingest's hot path.

`MqttConnection` runs paho's loop on a thread of its own. For a worker taking thousands of
messages a second that costs most of its CPU (measured: more than half of an ingest worker's
time was its network thread). Every message was handed over through a queue. Every PUBACK
woke the thread through a socket pair. Each packet cost a select() and a recv() for its
first byte, one per length byte and one for the rest. Here the worker drives paho through
its external-loop interface (`loop_read`, `loop_write`, `loop_misc`) when it wants
messages. Reads are buffered: one recv() takes whatever the kernel holds, and the PUBLISH
packets whole in it are decoded there, past paho's reader. Writes are gathered: a batch's
PUBACKs are written as bytes, past paho's packet queue, and leave in one send().

Memory stays bounded as before: the broker sends at most `receive_maximum` unacknowledged
messages. Past `max_held` messages taken from the socket and not yet handed out, nothing
more is read, so TCP tells the broker to hold on (Mosquitto 2.0.11 overshoots the receive
maximum).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, cast

from paho.mqtt import client as paho
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ehealthlab.errors import AuthenticationError, PermissionDeniedError
from ehealthlab.mqtt.buffered_socket import BufferedSocket
from ehealthlab.mqtt.common import (
    DEFAULT_TIMEOUT_S,
    LOST_CONNECTION,
    BrokerAddress,
    ConnectionLostError,
    DecodingClient,
    MqttError,
    ReceivedMessage,
    connect_properties,
    new_client,
    received_message,
    received_publish,
    unreachable,
)
from ehealthlab.mqtt.publish_decoder import DecodedPublish, UnusualPacketError, decode_publish

#: a PUBACK with no reason code (success) and no properties: type, remaining length 2, id
_PUBACK = struct.Struct("!BBH")
_PUBLISH = 0x30


class _BufferedClient(DecodingClient):
    """A `DecodingClient` over a `BufferedSocket`. `_create_socket` is paho's own (2.x) seam
    between connecting and talking; the consumer's tests run it against a real broker.

    PUBLISH packets already whole in the buffer are decoded straight from it
    (`read_buffered`), and acknowledgements are written as bytes (`puback`). paho's reader
    asks the socket for each header byte and fills a dict a packet, and its writer queues
    a dict a PUBACK: together about half of the consumer's CPU a message (measured with
    bench/mqtt_consumer.py). Whatever else comes (a SUBACK, a PUBACK of our own
    publication, PINGRESP, DISCONNECT, a packet cut by the end of a read, one the
    decoder leaves to paho) is read by paho's `loop_read` as before."""

    def _create_socket(self) -> Any:
        return BufferedSocket(super()._create_socket())

    def read_buffered(self, limit: int) -> int:
        """Hand up to `limit` PUBLISH packets (QoS 0 or 1) that are whole in the socket's
        buffer to `on_decoded_publish`; stop at anything else. Returns how many."""
        sock, handler = self._sock, self.on_decoded_publish
        if (
            not isinstance(sock, BufferedSocket)
            or handler is None
            or self._in_packet["command"]  # paho is inside a packet: the buffer is its rest
            or self._protocol != MQTTProtocolVersion.MQTTv5
        ):
            return 0
        sock.fill()
        taken = 0
        while taken < limit and (packet := sock.whole_packet()) is not None:
            header, start, stop = packet
            if header & 0xF0 != _PUBLISH or header & 0x06 > 0x02:  # not QoS 0 or 1
                break
            try:
                decoded = decode_publish(header, sock.buffered(start, stop))
            except UnusualPacketError:
                break  # paho's reader decides
            sock.take_until(stop)
            taken += 1
            handler(decoded)
            if decoded.qos == 1 and not self._manual_ack:
                self.puback([decoded.mid])
        if taken:
            with self._msgtime_mutex:  # what paho's reader notes for its keepalive
                self._last_bytes_received = paho.time_func()
        return taken

    def puback(self, mids: Iterable[int]) -> bool:
        """Acknowledge QoS 1 messages: their PUBACKs are gathered in the socket, to leave at
        its next flush. False when there is no connection (the broker sends them again)."""
        sock = self._sock
        if not isinstance(sock, BufferedSocket):
            return False
        sock.send(b"".join([_PUBACK.pack(0x40, 2, mid) for mid in mids]))
        return True


class MqttConsumer:
    """One subscriber with manual acknowledgement, driven by `receive` and `flush` from one
    thread (the worker's): no thread of its own, so never share it between threads."""

    def __init__(
        self,
        broker: BrokerAddress,
        client_id: str,
        *,
        clean_start: bool = False,
        session_expiry_s: int = 0,
        receive_maximum: int | None = None,
        max_held: int = 4000,
        trust_receive_stamp: bool = True,
        keepalive_s: int = 30,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._max_held = max_held
        self._trust_receive_stamp = trust_receive_stamp
        self._keepalive_s = keepalive_s
        self._received: deque[ReceivedMessage] = deque()
        self._connack: ReasonCode | None = None
        self._connected = False
        self._answers: dict[int, list[ReasonCode]] = {}
        self.session_present = False

        client = cast(
            _BufferedClient,
            new_client(broker, client_id, manual_ack=True, client_class=_BufferedClient),
        )
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_answer
        client.on_unsubscribe = self._handle_answer
        client.on_message = self._handle_message
        client.on_decoded_publish = self._handle_decoded
        # an external loop: paho then queues what it sends instead of writing it at once
        client.on_socket_register_write = lambda *_: None
        self._client = client

    # -- life cycle ----------------------------------------------------------------------

    def connect(self, timeout: float = DEFAULT_TIMEOUT_S) -> MqttConsumer:
        try:
            self._client.connect(
                self.broker.host,
                self.broker.port,
                keepalive=self._keepalive_s,
                clean_start=self._clean_start,
                properties=connect_properties(self._session_expiry_s, self._receive_maximum),
            )
        except OSError as exc:
            raise unreachable(self.broker, exc) from None
        deadline = time.monotonic() + timeout
        while self._connack is None and self._client.socket() is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.pump(min(remaining, 0.1))
        if not self._connected:
            self.close()
            if self._connack is not None and not self._connack.is_failure:
                raise ConnectionLostError(f"the broker closed {self.client_id!r} as it connected")
            if self._connack is not None:
                raise AuthenticationError(
                    f"the broker refused {self.client_id!r}: {self._connack.getName()}"
                )
            raise MqttError(f"no answer from the broker within {timeout:.0f} s")
        return self

    def close(self, *, end_session: bool = False) -> None:
        """Disconnect cleanly; `end_session` tells the broker to discard the session now."""
        properties = None
        if end_session:
            properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 0
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                self._client.disconnect(properties=properties)
                self._client.loop_write()  # paho closes the socket once DISCONNECT is out
            with contextlib.suppress(OSError):
                sock.close()
        self._connected = False

    @property
    def held(self) -> int:
        """Messages read and not yet handed out by `receive` (safe to ask from any thread)."""
        return len(self._received)

    @property
    def is_connected(self) -> bool:
        return self._connected and self._client.socket() is not None

    # -- operations ----------------------------------------------------------------------

    def subscribe(
        self, topic_filter: str, qos: int = 1, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        """Subscribe and wait for the SUBACK; a refused filter raises PermissionDeniedError."""
        result, mid = self._client.subscribe(topic_filter, qos=qos)
        granted = self._answer(result, mid, timeout, f"subscribe to {topic_filter!r}")
        if any(code.is_failure for code in granted):
            raise PermissionDeniedError(
                f"the broker refused the subscription to {topic_filter!r}: "
                + ", ".join(code.getName() for code in granted)
            )

    def unsubscribe(self, topic_filter: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Unsubscribe and wait for the UNSUBACK: after it, nothing new is sent."""
        result, mid = self._client.unsubscribe(topic_filter)
        self._answer(result, mid, timeout, f"unsubscribe from {topic_filter!r}")

    def receive(self, wait_s: float) -> ReceivedMessage | None:
        """The next message, waiting up to `wait_s` for one; None if none came."""
        if not self._received and self.is_connected:
            deadline = time.monotonic() + wait_s
            while True:
                self.pump(max(0.0, deadline - time.monotonic()))
                if self._received or not self.is_connected or time.monotonic() >= deadline:
                    break
        return self._received.popleft() if self._received else None

    def ack(self, message: ReceivedMessage) -> None:
        """Acknowledge a message (after it is stored); it leaves at the next `flush`."""
        self.ack_all((message,))

    def ack_all(self, messages: Iterable[ReceivedMessage]) -> None:
        """Acknowledge messages (after they are stored), in their order; the
        acknowledgements leave at the next `flush`."""
        mids = []
        for message in messages:
            if message.qos == 1:
                mids.append(message.mid)
            elif message.qos == 2:  # not subscribed for: paho keeps QoS 2's state
                self._client.ack(message.mid, message.qos)
        if mids:
            self._client.puback(mids)

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Queue a publication (leaves at the next `flush`); its PUBACK is not awaited."""
        info = self._client.publish(topic, payload, qos=qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError(f"publish to {topic!r}: {paho.error_string(info.rc)}")

    def flush(self) -> None:
        """Send what was queued (acknowledgements, publications) now."""
        self._write()

    def pump(self, timeout: float) -> None:
        """One turn of the network loop: send what is queued, wait up to `timeout` for the
        broker, read everything it sent (up to `max_held` messages held), keep alive."""
        client = self._client
        sock = client.socket()
        if not isinstance(sock, BufferedSocket):
            self._connected = False
            return
        self._write()
        if len(self._received) >= self._max_held:
            # hold on: nothing is read until the owner takes messages (TCP pushes back)
            time.sleep(min(timeout, 0.01))
            return
        if sock.pending() == 0:
            try:
                readable, writable, _ = select.select([sock], [sock] if sock.unsent else [], [],
                                                      timeout)  # fmt: skip
            except (OSError, ValueError):
                self._connected = False
                return
            if writable:
                self._write()
            if not readable:
                self._misc()
                return
        while (room := self._max_held - len(self._received)) > 0:
            if client.read_buffered(room):
                continue
            sock.starved = False
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or client.socket() is None:
                self._connected = False
                return
            if sock.starved:
                break
        self._write()
        self._misc()

    # -- inside --------------------------------------------------------------------------

    def _write(self) -> None:
        client = self._client
        if client.want_write() and client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._connected = False
            return
        sock = client.socket()
        if isinstance(sock, BufferedSocket):
            try:
                sock.flush()
            except OSError:
                self._connected = False
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _misc(self) -> None:
        if self._client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._connected = False

    def _answer(
        self, result: MQTTErrorCode, mid: int | None, timeout: float, what: str
    ) -> list[ReasonCode]:
        if result in LOST_CONNECTION:
            raise ConnectionLostError(f"{what}: {paho.error_string(result)}")
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttError(f"{what}: {paho.error_string(result)}")
        deadline = time.monotonic() + timeout
        while mid not in self._answers and self.is_connected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MqttError(f"{what}: no answer within {timeout:.0f} s")
            self.pump(min(remaining, 0.1))
        reasons = self._answers.pop(mid, None)
        if reasons is None:
            raise ConnectionLostError(f"{what}: the connection was lost")
        return reasons

    # -- paho callbacks (called from within pump) ----------------------------------------

    def _handle_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connack = reason
        if not reason.is_failure:
            self.session_present = flags.session_present
            self._connected = True

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected = False

    def _handle_answer(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._answers[mid] = reasons if isinstance(reasons, list) else [reasons]

    def _handle_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        self._received.append(received_message(msg, self._trust_receive_stamp))

    def _handle_decoded(self, publish: DecodedPublish) -> None:
        self._received.append(received_publish(publish, self._trust_receive_stamp))
