"""Only the right device can speak: dynamic-security clients against a real Mosquitto.

Every refusal is checked from the outside too: a real subscriber with the admin's rights
must see nothing arrive.
"""

from __future__ import annotations

import queue
import secrets
import time
import uuid

import pytest
from paho.mqtt.client import topic_matches_sub

from ehealthlab.contract.topics import feedback_topic, readings_topic, status_topic
from ehealthlab.errors import AuthenticationError, PermissionDeniedError
from ehealthlab.gateway.dynsec import DynamicSecurity
from ehealthlab.mqtt import BrokerAddress, MqttConnection, MqttError, ReceivedMessage

WAIT_S = 30.0  # bounds a failure only: what is awaited comes sooner on any machine


@pytest.fixture(scope="module")
def admin(mosquitto_broker) -> BrokerAddress:
    """The platform's client: dynamic-security admin, plus the platform role."""
    b = mosquitto_broker
    address = BrokerAddress(b.host, b.port, b.admin_username, b.admin_password)
    with DynamicSecurity(address) as dynsec:
        dynsec.ensure_platform_role(b.admin_username)
        dynsec.ensure_platform_role(b.admin_username)  # idempotent
    return address


@pytest.fixture
def devices(admin):
    """Two freshly registered devices: (device_id, password) each."""
    created = []
    with DynamicSecurity(admin) as dynsec:
        for _ in range(2):
            device_id = f"dev-{uuid.uuid4().hex[:10]}"
            password = secrets.token_hex(16)
            dynsec.create_device_client(device_id, password)
            created.append((device_id, password))
    yield created
    with DynamicSecurity(admin) as dynsec:
        for device_id, _ in created:
            if dynsec.get_client(device_id) is not None:
                dynsec.delete_device_client(device_id)


class Watcher:
    """A subscriber with the admin's rights, collecting what arrives.

    `nothing_arrives` needs no quiet period: the watcher sends itself a marker on
    `marker_topic` (a feedback topic, where the platform may publish) and checks that the
    marker is the first thing to arrive. Mosquitto handles messages one at a time and queues
    them for a client in that order, so whatever it let through before (every refused publish
    was answered before) would arrive ahead of the marker.
    """

    def __init__(self, admin: BrokerAddress, topic_filter: str, marker_topic: str) -> None:
        self.messages: queue.Queue[ReceivedMessage] = queue.Queue()
        self.marker_topic = marker_topic
        self.connection = MqttConnection(
            admin, f"watcher-{uuid.uuid4().hex[:6]}", on_message=self.messages.put
        )
        self.connection.connect()
        self.connection.subscribe(topic_filter)
        if not topic_matches_sub(topic_filter, marker_topic):
            self.connection.subscribe(marker_topic)

    def next(self, timeout: float = WAIT_S) -> ReceivedMessage:
        return self.messages.get(timeout=timeout)

    def nothing_arrives(self) -> bool:
        marker = f"marker-{uuid.uuid4().hex}".encode()
        self.connection.publish(self.marker_topic, marker)
        first = self.next()
        return (first.topic, first.payload) == (self.marker_topic, marker)

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def watch(admin):
    watchers = []

    def start(topic_filter: str, marker_topic: str) -> Watcher:
        watchers.append(Watcher(admin, topic_filter, marker_topic))
        return watchers[-1]

    yield start
    for w in watchers:
        w.close()


def connect_as(admin: BrokerAddress, device_id: str, password: str, client_id: str | None = None):
    return MqttConnection(admin.as_user(device_id, password), client_id or device_id).connect()


def test_a_device_publishes_readings_and_status_on_its_own_topics(admin, devices, watch):
    (device_id, password), _ = devices
    seen = watch(f"ehl/v1/devices/{device_id}/#", feedback_topic(device_id))
    with connect_as(admin, device_id, password) as device:
        device.publish(readings_topic(device_id), b'{"hello": 1}')
        device.publish(status_topic(device_id), b'{"state": "online"}', retain=True)
    first, second = seen.next(), seen.next()
    assert (first.topic, first.payload) == (readings_topic(device_id), b'{"hello": 1}')
    assert second.topic == status_topic(device_id)


def test_publishing_on_another_devices_topic_delivers_nothing(admin, devices, watch):
    (a, a_password), (b, _) = devices
    seen = watch(f"ehl/v1/devices/{b}/#", feedback_topic(b))
    with connect_as(admin, a, a_password) as device:
        for topic in (readings_topic(b), status_topic(b), feedback_topic(a), "ehl/v1/other"):
            with pytest.raises(PermissionDeniedError, match="Not authorized"):
                device.publish(topic, b"{}")
    assert seen.nothing_arrives()


def test_a_device_subscribes_to_its_own_feedback_only(admin, devices):
    (a, a_password), (b, _) = devices
    received: queue.Queue[ReceivedMessage] = queue.Queue()
    device = MqttConnection(admin.as_user(a, a_password), a, on_message=received.put).connect()
    try:
        device.subscribe(feedback_topic(a))
        for refused in (feedback_topic(b), readings_topic(b), "ehl/v1/devices/+/feedback", "#"):
            with pytest.raises(PermissionDeniedError):
                device.subscribe(refused)
        with MqttConnection(admin, "feedback-sender").connect() as platform:
            platform.publish(feedback_topic(b), b'{"for": "b"}')
            platform.publish(feedback_topic(a), b'{"for": "a"}')
            platform.publish(feedback_topic(a), b'{"for": "a", "last": true}')
        # b's feedback, had it leaked, would come first: the broker queues in order
        only = received.get(timeout=WAIT_S)
        assert (only.topic, only.payload) == (feedback_topic(a), b'{"for": "a"}')
        last = received.get(timeout=WAIT_S)
        assert (last.topic, last.payload) == (feedback_topic(a), b'{"for": "a", "last": true}')
        assert received.empty()
    finally:
        device.close()


def test_anonymous_wrong_password_and_wrong_client_id_are_refused(admin, devices):
    (a, a_password), _ = devices
    anonymous = BrokerAddress(admin.host, admin.port)
    with pytest.raises(AuthenticationError):
        MqttConnection(anonymous, "anonymous-1").connect()
    with pytest.raises(AuthenticationError):
        connect_as(admin, a, "wrong-password")
    with pytest.raises(AuthenticationError):
        connect_as(admin, a, a_password, client_id=f"{a}-impostor")


def test_a_revoked_device_is_dropped_and_cannot_come_back(admin, devices, watch):
    (a, a_password), _ = devices
    lost = []
    device = MqttConnection(admin.as_user(a, a_password), a, on_connection_lost=lost.append)
    device.connect()
    seen = watch(readings_topic(a), feedback_topic(a))
    with DynamicSecurity(admin) as dynsec:
        dynsec.delete_device_client(a)
        assert dynsec.get_client(a) is None
    # wait for the callback itself: it runs just after is_connected turns false
    deadline = time.monotonic() + WAIT_S
    while not lost and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lost and not device.is_connected
    with pytest.raises((MqttError, PermissionDeniedError)):
        device.publish(readings_topic(a), b"{}", timeout=1)
    device.drop()
    with pytest.raises(AuthenticationError):
        connect_as(admin, a, a_password)
    assert seen.nothing_arrives()


def test_a_rotated_password_replaces_the_old_one(admin, devices):
    (a, old_password), _ = devices
    new_password = secrets.token_hex(16)
    with DynamicSecurity(admin) as dynsec:
        dynsec.set_password(a, new_password)
    with pytest.raises(AuthenticationError):
        connect_as(admin, a, old_password)
    connect_as(admin, a, new_password).close()
