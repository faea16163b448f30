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
from ehealthlab.mqtt.consumer import _BufferedSocket

WAIT_S = 30.0  # bounds a failure only


# -- the buffered socket ---------------------------------------------------------------------


@pytest.fixture
def pair():
    left, right = socket.socketpair()
    right.setblocking(False)
    yield left, _BufferedSocket(right)
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
