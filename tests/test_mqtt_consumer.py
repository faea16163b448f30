"""The subscriber ingest drives from its own thread (ehealthlab.mqtt.consumer): its buffered
socket on a real socket pair, and the consumer against the session's real broker."""

from __future__ import annotations

import contextlib
import socket
import uuid

import pytest

from ehealthlab.errors import AuthenticationError, PermissionDeniedError
from ehealthlab.gateway.dynsec import DynamicSecurity
from ehealthlab.mqtt import BrokerAddress, MqttConnection, MqttConsumer
from ehealthlab.mqtt.buffered_socket import BufferedSocket
from ehealthlab.mqtt.consumer import MqttConsumer as _Consumer
from ehealthlab.mqtt.consumer import _BufferedClient
from ehealthlab.mqtt.publish_decoder import DecodedPublish

WAIT_S = 30.0  # bounds a failure only


# -- the buffered socket ---------------------------------------------------------------------


@pytest.fixture
def pair():
    left, right = socket.socketpair()
    right.setblocking(False)
    yield left, BufferedSocket(right)
    left.close()
    right.close()


def test_small_reads_are_served_from_one_read_of_the_kernel(pair):
    writer, sock = pair
    writer.sendall(b"\x30\x05hello\x40\x02ab")
    assert sock.recv(1) == b"\x30"
    # the rest already came in the first read: nothing is left in the kernel
    assert sock.pending() == 10
    assert sock.recv(1) == b"\x05"
    assert sock.recv(5) == b"hello"
    assert sock.recv(1) == b"\x40"
    assert sock.recv(1) == b"\x02"
    assert sock.recv(10) == b"ab"  # a short read, as the kernel gives
    assert sock.pending() == 0
    sock.starved = False
    with pytest.raises(BlockingIOError):
        sock.recv(1)
    assert sock.starved


@pytest.mark.parametrize("size", [1, 7, 4096, 300_000])
def test_whatever_the_sizes_asked_the_bytes_come_out_in_order(pair, size):
    writer, sock = pair
    data = bytes(range(256)) * 2000  # 512,000 bytes: more than one read of the kernel
    writer.setblocking(False)
    received = bytearray()
    sent = 0
    while len(received) < len(data):
        if sent < len(data):
            with contextlib.suppress(BlockingIOError):  # the kernel's buffer is full
                sent += writer.send(data[sent : sent + 65536])
        try:
            chunk = sock.recv(size)
        except BlockingIOError:
            continue
        assert 0 < len(chunk) <= size
        received += chunk
    assert bytes(received) == data


def test_writes_are_gathered_until_flushed(pair):
    reader, sock = pair
    reader.setblocking(False)
    assert sock.send(b"\x40\x02\x00\x01") == 4
    assert sock.send(b"\x40\x02\x00\x02") == 4
    assert sock.unsent
    with pytest.raises(BlockingIOError):
        reader.recv(100)  # nothing left yet
    sock.flush()
    assert not sock.unsent
    assert reader.recv(100) == b"\x40\x02\x00\x01\x40\x02\x00\x02"


def test_close_sends_what_was_gathered(pair):
    reader, sock = pair
    sock.send(b"\xe0\x00")  # a DISCONNECT
    sock.close()
    assert reader.recv(100) == b"\xe0\x00"


# -- packets taken whole from the buffer, acknowledgements as bytes -------------------------


def publish_bytes(payload: bytes, *, mid: int = 1, qos: int = 1, properties: bytes = b"") -> bytes:
    """An MQTT 5 PUBLISH on topic "t" (fixed header included)."""
    body = b"\x00\x01t" + (mid.to_bytes(2, "big") if qos else b"")
    body += bytes([len(properties)]) + properties + payload
    assert len(body) < 128
    return bytes([0x30 | qos << 1, len(body)]) + body


def test_whole_packets_are_located_and_taken_one_at_a_time(pair):
    writer, sock = pair
    first, second = publish_bytes(b"one"), publish_bytes(b"two", mid=2)
    writer.sendall(first + second + b"\x40\x02\x00")
    # nothing read yet: the kernel holds it all, the buffer nothing
    assert sock.whole_packet() is None
    sock._data, sock._pos = sock._sock.recv(1000), 0
    header, start, stop = sock.whole_packet()
    assert (header, bytes(sock.buffered(start, stop))) == (first[0], first[2:])
    assert sock.whole_packet() == (header, start, stop)  # located, not taken
    sock.take_until(stop)
    header, start, stop = sock.whole_packet()
    assert bytes(sock.buffered(start, stop)) == second[2:]
    sock.take_until(stop)
    assert sock.whole_packet() is None  # the PUBACK lacks its last byte
    assert sock.pending() == 3
    writer.sendall(b"\x05")
    assert sock.recv(3) == b"\x40\x02\x00"
    assert sock.recv(1) == b"\x05"


def test_fill_reads_the_kernel_into_an_empty_buffer_only(pair):
    writer, sock = pair
    sock.fill()  # nothing to read: nothing happens, and nothing is reported yet
    assert sock.pending() == 0
    first = publish_bytes(b"one")
    writer.sendall(first)
    sock.fill()
    assert sock.whole_packet() == (first[0], 2, len(first))
    writer.sendall(publish_bytes(b"two"))
    sock.fill()  # the buffer holds something still: the kernel keeps the rest
    assert sock.pending() == len(first)


def test_a_peer_that_closed_during_a_fill_is_reported_by_the_next_recv(pair):
    writer, sock = pair
    writer.sendall(b"\xd0\x00")  # a PINGRESP, then the end
    writer.shutdown(socket.SHUT_WR)
    sock.fill()
    assert sock.recv(1) == b"\xd0"
    assert sock.recv(1) == b"\x00"
    sock.fill()
    assert sock.recv(1) == b""  # as the socket itself would say it


def test_a_length_longer_than_four_bytes_is_left_to_paho(pair):
    writer, sock = pair
    writer.sendall(b"\x30\xff\xff\xff\xff\x7f")
    sock._data, sock._pos = sock._sock.recv(100), 0
    assert sock.whole_packet() is None


@pytest.fixture
def client(pair):
    """A consumer's paho client over the buffered end of a socket pair, MQTT 5, with what it
    decodes collected: (the other end, the client, what came)."""
    writer, sock = pair
    consumer = _Consumer(BrokerAddress("127.0.0.1", 1), "pair")
    paho_client = consumer._client
    assert isinstance(paho_client, _BufferedClient)
    paho_client._sock = sock
    came: list[DecodedPublish] = []
    paho_client.on_decoded_publish = came.append
    return writer, paho_client, came


def fill(client: _BufferedClient, data: bytes, writer: socket.socket) -> None:
    writer.sendall(data)
    sock = client._sock
    sock._data, sock._pos = sock._sock.recv(100_000), 0


def test_publishes_whole_in_the_buffer_are_decoded_until_something_else_comes(client):
    writer, paho_client, came = client
    stamped = b"\x26\x00\x0fehl-received-at\x00\x0d1765000000000"
    fill(paho_client, publish_bytes(b"a", mid=1, properties=stamped)
         + publish_bytes(b"b", mid=2, qos=0) + b"\xd0\x00"  # PINGRESP
         + publish_bytes(b"c", mid=3), writer)  # fmt: skip
    assert paho_client.read_buffered(10) == 2
    assert [(m.payload, m.mid, m.qos) for m in came] == [(b"a", 1, 1), (b"b", 0, 0)]
    assert came[0].user_properties == [("ehl-received-at", "1765000000000")]
    assert paho_client._sock.pending() == 2 + len(publish_bytes(b"c", mid=3))  # paho's to read
    assert paho_client.read_buffered(10) == 0


def test_the_first_publish_of_a_read_is_decoded_whole_too(client):
    """Straight from the kernel: paho's reader, asked first, would take the first packet of
    every read a byte at a time."""
    writer, paho_client, came = client
    writer.sendall(publish_bytes(b"a", mid=1) + publish_bytes(b"b", mid=2))
    assert paho_client.read_buffered(10) == 2
    assert [m.payload for m in came] == [b"a", b"b"]


def test_no_more_than_the_limit_is_taken(client):
    writer, paho_client, came = client
    fill(paho_client, b"".join(publish_bytes(bytes([n]), mid=n + 1) for n in range(5)), writer)
    assert paho_client.read_buffered(3) == 3
    assert paho_client.read_buffered(3) == 2
    assert [m.mid for m in came] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("packet", "why"),
    [
        (publish_bytes(b"x", qos=2), "QoS 2: paho keeps it until PUBREL"),
        (publish_bytes(b"x", properties=b"\x99\x00"), "an unknown property: paho decides"),
        (b"\x90\x03\x00\x01\x00", "a SUBACK"),
    ],
)
def test_what_the_decoder_does_not_take_is_left_whole_for_paho(client, packet, why):
    writer, paho_client, came = client
    fill(paho_client, packet, writer)
    assert paho_client.read_buffered(10) == 0, why
    assert paho_client._sock.pending() == len(packet)
    assert came == []


def test_nothing_is_taken_while_paho_is_inside_a_packet(client):
    writer, paho_client, came = client
    fill(paho_client, publish_bytes(b"a"), writer)
    paho_client._in_packet["command"] = 0x30  # paho has read a header and waits for the rest
    assert paho_client.read_buffered(10) == 0
    assert came == []


def test_acknowledgements_are_written_as_pubacks_in_order_at_the_flush(client):
    writer, paho_client, _ = client
    writer.setblocking(False)
    assert paho_client.puback([1, 258, 65535])
    with pytest.raises(BlockingIOError):
        writer.recv(100)  # gathered, not yet sent
    paho_client._sock.flush()
    assert writer.recv(100) == b"\x40\x02\x00\x01\x40\x02\x01\x02\x40\x02\xff\xff"
    paho_client._sock = None
    assert not paho_client.puback([2])  # no connection: the broker sends it again


# -- the consumer against a real broker ------------------------------------------------------


@pytest.fixture(scope="module")
def admin(mosquitto_broker) -> BrokerAddress:
    b = mosquitto_broker
    address = BrokerAddress(b.host, b.port, b.admin_username, b.admin_password)
    with DynamicSecurity(address) as dynsec:
        dynsec.ensure_platform_role(b.admin_username)
    return address


@pytest.fixture
def device(admin):
    """A registered device, whose readings topic the platform's client may subscribe to:
    (its broker address, its readings topic)."""
    device_id = f"consumer-{uuid.uuid4().hex[:10]}"
    password = uuid.uuid4().hex
    with DynamicSecurity(admin) as dynsec:
        dynsec.create_device_client(device_id, password)
    yield admin.as_user(device_id, password), f"ehl/v1/devices/{device_id}/readings"
    with DynamicSecurity(admin) as dynsec:
        dynsec.delete_device_client(device_id)


def take(consumer: MqttConsumer, count: int) -> list:
    got = []
    while len(got) < count:
        message = consumer.receive(WAIT_S)
        assert message is not None, f"{len(got)} of {count} came"
        got.append(message)
    return got


def test_messages_arrive_in_order_with_the_broker_stamp_and_acks_end_redelivery(admin, device):
    name = f"consumer-{uuid.uuid4().hex[:8]}"
    address, where = device
    consumer = MqttConsumer(admin, name, session_expiry_s=60, receive_maximum=50)
    consumer.connect()
    consumer.subscribe(where, qos=1)
    with MqttConnection(address, address.username or "") as publisher:
        for n in range(300):
            publisher.publish_nowait(where, f"{n}".encode(), qos=1)
        got = []
        while len(got) < 300:
            batch = take(consumer, 1)
            got.extend(batch)
            for message in batch:
                consumer.ack(message)
            consumer.flush()
    assert [m.payload for m in got] == [f"{n}".encode() for n in range(300)]
    assert all(m.broker_stamped for m in got)  # the session's broker stamps (plugin)
    consumer.close()
    # acknowledged: the session holds none of them again. QoS 1 is at least once: Mosquitto
    # 2.0.11 now and then queues one message twice (seen in about a third of runs, with
    # MqttConnection too), and the copy comes on the next connection
    again = MqttConsumer(admin, name, session_expiry_s=60)
    again.connect()
    assert again.session_present
    extra = []
    while (message := again.receive(1.0)) is not None:
        extra.append(message.payload)
    assert len(extra) <= 3 and set(extra) <= {m.payload for m in got}, extra
    again.close(end_session=True)


def test_what_was_not_acknowledged_comes_again_on_the_next_connection(admin, device):
    name = f"consumer-{uuid.uuid4().hex[:8]}"
    address, where = device
    consumer = MqttConsumer(admin, name, session_expiry_s=60, receive_maximum=20)
    consumer.connect()
    consumer.subscribe(where, qos=1)
    with MqttConnection(address, address.username or "") as publisher:
        for n in range(10):
            publisher.publish(where, f"{n}".encode(), qos=1)
    first = take(consumer, 10)
    for message in first[:4]:
        consumer.ack(message)
    consumer.flush()
    consumer.close()  # six unacknowledged
    again = MqttConsumer(admin, name, session_expiry_s=60, receive_maximum=20)
    again.connect()
    redelivered = take(again, 6)
    # in order; a message the broker queued twice (see above) may follow
    assert [m.payload for m in redelivered] == [f"{n}".encode() for n in range(4, 10)]
    again.close(end_session=True)


def test_past_max_held_nothing_more_is_read_until_messages_are_taken(admin, device):
    name = f"consumer-{uuid.uuid4().hex[:8]}"
    address, where = device
    consumer = MqttConsumer(admin, name, session_expiry_s=60, receive_maximum=500, max_held=40)
    consumer.connect()
    consumer.subscribe(where, qos=1)
    with MqttConnection(address, address.username or "") as publisher:
        for _ in range(200):
            publisher.publish_nowait(where, b"x" * 100, qos=1)
        publisher.publish(where, b"last", qos=1)
    first = consumer.receive(WAIT_S)
    assert first is not None
    for _ in range(20):
        consumer.pump(0.05)
        assert consumer.held <= 40
    rest = take(consumer, 200)
    assert rest[-1].payload == b"last"
    consumer.close(end_session=True)


def test_refusals_are_the_platforms_errors(admin, device):
    stranger = BrokerAddress(admin.host, admin.port, "nobody", "wrong")
    with pytest.raises(AuthenticationError):
        MqttConsumer(stranger, f"x-{uuid.uuid4().hex[:6]}").connect(timeout=WAIT_S)
    address, _ = device
    consumer = MqttConsumer(address, address.username or "").connect(timeout=WAIT_S)
    try:
        with pytest.raises(PermissionDeniedError):
            consumer.subscribe("ehl/v1/devices/+/readings", qos=1)
    finally:
        consumer.close()


def test_a_user_property_holding_u_feff_is_delivered_and_does_not_break_the_connection(
    admin, device
):
    """MQTT 5 allows U+FEFF in a string and says it must not be stripped ([MQTT-1.5.4-3]);
    Mosquitto forwards it. paho's own decoder refuses it as malformed and drops the
    connection, so such a message, never acknowledged, came again and again: one device
    could stop ingest. The consumer's decoder takes it as the standard says."""
    name = f"consumer-{uuid.uuid4().hex[:8]}"
    address, where = device
    consumer = MqttConsumer(admin, name, session_expiry_s=60, receive_maximum=20)
    consumer.connect()
    consumer.subscribe(where, qos=1)
    with MqttConnection(address, address.username or "") as publisher:
        publisher.publish(where, b"first", qos=1, user_properties=[("note", "\ufeffbom")])
        publisher.publish(where, b"second", qos=1)
    got = take(consumer, 2)
    assert [m.payload for m in got] == [b"first", b"second"]
    assert all(m.broker_stamped for m in got)
    assert consumer.is_connected
    for message in got:
        consumer.ack(message)
    consumer.close(end_session=True)
