"""An MQTT 5 connection with blocking, checked calls, its network loop on a thread of its own:
what the gateway, the simulators, the conformance check and the tests use. (Ingest's hot path
uses `MqttConsumer`, which drives paho from the worker's own thread.)
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

from paho.mqtt import client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ehealthlab.errors import AuthenticationError, PermissionDeniedError
from ehealthlab.mqtt.common import (
    DEFAULT_TIMEOUT_S,
    LOST_CONNECTION,
    BrokerAddress,
    ConnectionLostError,
    GracefulClient,
    MessageHandler,
    MqttError,
    PacketTooLargeError,
    ReceivedMessage,
    Will,
    connect_properties,
    new_client,
    publish_packet_size,
    received_message,
    received_publish,
    unreachable,
)
from ehealthlab.mqtt.publish_decoder import DecodedPublish

_MAX_MESSAGE_IDS = 65_535


class MqttConnection:
    """One MQTT 5 client connection, its network loop on a background thread.

    Calls block until the broker answers (CONNACK, SUBACK, PUBACK) and raise on refusal.
    `on_message` runs on the network thread: keep it short (hand work to a queue).
    """

    def __init__(
        self,
        broker: BrokerAddress,
        client_id: str,
        *,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        will: Will | None = None,
        on_message: MessageHandler | None = None,
        on_connection_lost: Callable[[str], None] | None = None,
        manual_ack: bool = False,
        max_inflight: int = 1000,
        max_queued: int = 0,
        receive_maximum: int | None = None,
        trust_receive_stamp: bool = True,
    ) -> None:
        self.broker = broker
        #: False for a broker without the receive-stamp plugin: a stamp on a message could
        #: then only be the publisher's, and is never believed
        self._trust_receive_stamp = trust_receive_stamp
        self.client_id = client_id
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._on_message = on_message
        self._on_connection_lost = on_connection_lost
        self._connected = threading.Event()
        self._connack_received = threading.Event()
        self._connack: ReasonCode | None = None
        #: why the broker closed the connection last (its DISCONNECT's reason, or paho's)
        self._lost_reason = "closed"
        #: the broker's Maximum Packet Size from its CONNACK (MQTT 5), None when it has none
        self.max_packet_size: int | None = None
        self._lock = threading.Lock()
        self._acks: dict[int, threading.Event] = {}
        self._ack_reasons: OrderedDict[int, ReasonCode | list[ReasonCode]] = OrderedDict()
        self._untracked: set[int] = set()
        self.session_present = False

        # closed gracefully: paho closes right after its DISCONNECT, whatever it has not read
        client = new_client(
            broker, client_id, manual_ack=manual_ack, will=will, client_class=GracefulClient
        )
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(max_queued)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_publish = self._handle_publish
        client.on_message = self._handle_message
        client.on_decoded_publish = self._handle_decoded
        client.on_unsubscribe = self._handle_unsubscribe
        self._client = client

    # -- life cycle ----------------------------------------------------------------------

    def connect(self, timeout: float = DEFAULT_TIMEOUT_S) -> MqttConnection:
        properties = connect_properties(self._session_expiry_s, self._receive_maximum)
        try:
            self._client.connect(
                self.broker.host,
                self.broker.port,
                keepalive=30,
                clean_start=self._clean_start,
                properties=properties,
            )
        except OSError as exc:
            raise unreachable(self.broker, exc) from None
        self._client.loop_start()
        answered = self._connack_received.wait(timeout)
        if not self._connected.is_set():
            self.close()
            if answered and (self._connack is None or not self._connack.is_failure):
                raise ConnectionLostError(
                    f"the broker closed {self.client_id!r} as it connected ({self._lost_reason})"
                )
            if self._connack is not None and self._connack.is_failure:
                raise AuthenticationError(
                    f"the broker refused {self.client_id!r}: {self._connack.getName()}"
                )
            raise MqttError(f"no answer from the broker within {timeout:.0f} s")
        return self

    def close(self, *, end_session: bool = False) -> None:
        """Disconnect cleanly (no Last Will) and stop the network thread; `end_session`
        tells the broker to discard a persistent session now rather than keep it."""
        properties = None
        if end_session:
            properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 0
        self._client.disconnect(properties=properties)
        self._stop_network_thread()

    def drop(self) -> None:
        """Close the socket without DISCONNECT, as a device losing power: the Will is sent.

        Shut down before closing: that wakes the network thread out of its select() at once
        (a plain close from this thread does not, and loop_stop then waits up to a second).
        """
        sock = self._client.socket()
        if sock is not None:
            shutdown = getattr(sock, "shutdown", None)  # a socket, or our GracefulSocket
            if shutdown is not None:
                with contextlib.suppress(OSError):
                    shutdown(socket.SHUT_RDWR)
            sock.close()
        self._stop_network_thread()

    def _stop_network_thread(self) -> None:
        """Stop paho's network thread and close the socket pair it woke it with.

        paho 2.2 opens that pair in loop_start and leaves it to the client's finaliser,
        so a client caught in a reference cycle leaks two sockets until a garbage
        collection reports them as unclosed. Its own reset closes only the pair.
        """
        self._client.loop_stop()
        if threading.current_thread().name.startswith("paho-mqtt-client-"):
            return  # called from the network thread itself, which ends on its own
        self._client._reset_sockets(sockpair_only=True)  # private: see the docstring

    @property
    def is_connected(self) -> bool:
        """Between an accepted CONNACK and the loss of the connection (paho's own flag
        lingers after the broker drops a client)."""
        return self._connected.is_set()

    def __enter__(self) -> MqttConnection:
        return self.connect() if not self.is_connected else self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- operations ----------------------------------------------------------------------

    def subscribe(
        self, topic_filter: str, qos: int = 1, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        """Subscribe and wait for the SUBACK; a refused filter raises PermissionDeniedError."""
        result, mid = self._client.subscribe(topic_filter, qos=qos)
        self._check(result, f"subscribe to {topic_filter!r}")
        if mid is None:
            raise MqttError(f"subscribe to {topic_filter!r}: not sent")
        reasons = self._wait(mid, timeout, f"subscribe to {topic_filter!r}")
        granted = reasons if isinstance(reasons, list) else [reasons]
        if any(code.is_failure for code in granted):
            raise PermissionDeniedError(
                f"the broker refused the subscription to {topic_filter!r}: "
                + ", ".join(code.getName() for code in granted)
            )

    def unsubscribe(self, topic_filter: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Unsubscribe and wait for the UNSUBACK: after it, nothing new arrives."""
        result, mid = self._client.unsubscribe(topic_filter)
        self._check(result, f"unsubscribe from {topic_filter!r}")
        if mid is not None:
            self._wait(mid, timeout, f"unsubscribe from {topic_filter!r}")

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Publish and, at QoS 1, wait for the PUBACK; a refusal raises PermissionDeniedError."""
        mid = self.publish_nowait(topic, payload, qos, retain, user_properties=user_properties)
        if qos == 0:
            return
        reason = self._wait(mid, timeout, f"publish to {topic!r}")
        if isinstance(reason, ReasonCode) and reason.is_failure:
            raise PermissionDeniedError(
                f"the broker refused the publication to {topic!r}: {reason.getName()}"
            )

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        *,
        track: bool = True,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> int:
        """Queue a publication; returns its message id. With `track` (the default) its
        PUBACK is kept for `wait_for`; without, it is dropped on arrival, so that a later
        operation given the same 16-bit id never mistakes it for its own answer."""
        # never call paho holding our lock: its network thread holds paho's own lock when it
        # calls back into _settle, which takes ours (a PUBACK arriving before we look is
        # kept by _settle until _wait collects it)
        properties = None
        if user_properties:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.UserProperty = list(user_properties)
        size = publish_packet_size(topic, payload, qos, properties)
        if self.max_packet_size is not None and size > self.max_packet_size:
            raise PacketTooLargeError(
                f"publish to {topic!r}: the packet would be {size} bytes; the broker takes at"
                f" most {self.max_packet_size} (its Maximum Packet Size)"
            )
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        self._check(info.rc, f"publish to {topic!r}")
        if qos > 0 and not track:
            with self._lock:
                if self._ack_reasons.pop(info.mid, None) is not None:
                    self._acks.pop(info.mid, None)  # it already came: forget it
                else:
                    self._untracked.add(info.mid)
        return info.mid

    def wait_for(self, mid: int, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
        """Wait for the PUBACK of `mid`; True when it arrived and was not a refusal."""
        reason = self._wait(mid, timeout, f"message {mid}")
        return not (isinstance(reason, ReasonCode) and reason.is_failure)

    def ack(self, message: ReceivedMessage) -> None:
        """Acknowledge a message received with manual_ack (after it is safely stored)."""
        self._client.ack(message.mid, message.qos)

    # -- paho callbacks (network thread) -------------------------------------------------

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
            self.max_packet_size = getattr(properties, "MaximumPacketSize", None)
            self._connected.set()
        self._connack_received.set()

    def _handle_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self._connected.is_set()
        self._lost_reason = reason.getName()
        self._connected.clear()
        self._connack_received.set()  # a refusal may arrive as a disconnect
        with self._lock:
            waiting = list(self._acks.values())
        for event in waiting:  # nobody waits forever on a dead connection
            event.set()
        if was_connected and self._on_connection_lost is not None:
            self._on_connection_lost(reason.getName())

    def _handle_subscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._settle(mid, reasons)

    def _handle_unsubscribe(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._settle(mid, reasons)

    def _handle_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._settle(mid, reason)

    def _handle_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if self._on_message is None:
            return
        self._on_message(received_message(msg, self._trust_receive_stamp))

    def _handle_decoded(self, publish: DecodedPublish) -> None:
        if self._on_message is None:
            return
        self._on_message(received_publish(publish, self._trust_receive_stamp))

    # -- bookkeeping ---------------------------------------------------------------------

    def _settle(self, mid: int, reason: ReasonCode | list[ReasonCode]) -> None:
        with self._lock:
            if mid in self._untracked:
                self._untracked.discard(mid)
                return
            self._ack_reasons[mid] = reason
            event = self._acks.setdefault(mid, threading.Event())
            # answers nobody waits for (publish_nowait) must not pile up: message ids are
            # 16-bit, so keeping the latest 65,535 keeps every one still of interest
            while len(self._ack_reasons) > _MAX_MESSAGE_IDS:
                stale, _ = self._ack_reasons.popitem(last=False)
                self._acks.pop(stale, None)
        event.set()

    def _wait(self, mid: int, timeout: float, what: str) -> ReasonCode | list[ReasonCode]:
        with self._lock:
            event = self._acks.setdefault(mid, threading.Event())
            if not self._connected.is_set() and mid not in self._ack_reasons:
                # lost before this wait began: the disconnect woke only those waiting then
                event.set()
        arrived = event.wait(timeout)
        with self._lock:
            self._acks.pop(mid, None)
            reason = self._ack_reasons.pop(mid, None)
        if reason is None:
            if arrived:
                raise ConnectionLostError(f"{what}: the connection was lost ({self._lost_reason})")
            raise MqttError(f"{what}: no answer within {timeout:.0f} s")
        return reason

    @staticmethod
    def _check(result: MQTTErrorCode, what: str) -> None:
        if result in LOST_CONNECTION:
            raise ConnectionLostError(f"{what}: {paho.error_string(result)}")
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError(f"{what}: {paho.error_string(result)}")
