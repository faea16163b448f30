"""The isolation matrix over MQTT: every device x every other device's topics, against the
suite's real Mosquitto with dynamic security.

Four devices get their clients and roles exactly as the gateway gives them
(`DynamicSecurity.create_device_client`). For each ordered pair (attacker, victim) — 12 —
the attacker publishes on each of the victim's topics of the contract (readings, status
retained and not, feedback) at QoS 1 (refused: PUBACK "Not authorized") and at QoS 0 (no
answer in MQTT; dropped), and subscribes to each of them (refused: SUBACK failure). Then:
nothing of it reached a subscriber with the platform's rights on every device topic (so
ingest, which reads through those rights, can store none of it), no retained status was left,
and a device receives nothing of what the platform sends another device.

"Nothing arrived" needs no quiet period: a marker sent last on the same broker arrives after
anything sent before it (Mosquitto queues a client's messages in order), so the marker must be
the first thing received.
"""

from __future__ import annotations

import itertools
import queue
import secrets
import uuid
from collections.abc import Iterator

import pytest

from ehealthlab.contract.topics import feedback_topic, readings_topic, status_topic
from ehealthlab.errors import PermissionDeniedError
from ehealthlab.gateway.dynsec import DynamicSecurity
from ehealthlab.mqtt import BrokerAddress, MqttConnection, ReceivedMessage

DEVICES = 4
WAIT_S = 30.0  # bounds a failure only
#: the contract's topic kinds (device-contract.md, section 2)
TOPICS = {"readings": readings_topic, "status": status_topic, "feedback": feedback_topic}


class Inbox:
    """A connection and what it received, in order."""

    def __init__(self, address: BrokerAddress, client_id: str) -> None:
        self.messages: queue.Queue[ReceivedMessage] = queue.Queue()
        self.connection = MqttConnection(address, client_id, on_message=self.messages.put)
        self.connection.connect()

    def first_is(self, topic: str, payload: bytes) -> bool:
        first = self.messages.get(timeout=WAIT_S)
        return (first.topic, first.payload) == (topic, payload)

    def before(self, topic: str, payload: bytes) -> list[ReceivedMessage]:
        """Everything received before (`topic`, `payload`) arrives."""
        seen: list[ReceivedMessage] = []
        while (message := self.messages.get(timeout=WAIT_S)).payload != payload or (
            message.topic != topic
        ):
            seen.append(message)
        return seen


@pytest.fixture(scope="module")
def admin(mosquitto_broker) -> BrokerAddress:
    b = mosquitto_broker
    address = BrokerAddress(b.host, b.port, b.admin_username, b.admin_password)
    with DynamicSecurity(address) as dynsec:
        dynsec.ensure_platform_role(b.admin_username)
    return address


@pytest.fixture(scope="module")
def devices(admin: BrokerAddress) -> Iterator[dict[str, Inbox]]:
    """Four devices, connected as themselves."""
    passwords = {f"iso-{uuid.uuid4().hex[:10]}": secrets.token_urlsafe(24) for _ in range(DEVICES)}
    with DynamicSecurity(admin) as dynsec:
        for device_id, password in passwords.items():
            dynsec.create_device_client(device_id, password)
    inboxes = {d: Inbox(admin.as_user(d, p), d) for d, p in passwords.items()}
    for device_id, inbox in inboxes.items():
        inbox.connection.subscribe(feedback_topic(device_id))
    yield inboxes
    for inbox in inboxes.values():
        inbox.connection.close()
    with DynamicSecurity(admin) as dynsec:
        for device_id in passwords:
            dynsec.delete_device_client(device_id)


def test_every_device_is_refused_every_other_devices_topics(admin, devices, record_property):
    platform = Inbox(admin, f"iso-platform-{uuid.uuid4().hex[:6]}")
    try:
        platform.connection.subscribe("ehl/v1/devices/#")
        checks = 0
        for attacker, victim in itertools.permutations(devices, 2):
            device = devices[attacker].connection
            for kind, topic_of in TOPICS.items():
                topic = topic_of(victim)
                payload = f'{{"from": "{attacker}", "kind": "{kind}"}}'.encode()
                for retain in (False, True):
                    with pytest.raises(PermissionDeniedError, match="Not authorized"):
                        device.publish(topic, payload, qos=1, retain=retain)
                device.publish(topic, payload, qos=0)  # no answer at QoS 0: must be dropped
                with pytest.raises(PermissionDeniedError):
                    device.subscribe(topic)
                checks += 2  # publish, subscribe
            for wildcard in (f"ehl/v1/devices/{victim}/#", "ehl/v1/devices/+/feedback", "#"):
                with pytest.raises(PermissionDeniedError):
                    device.subscribe(wildcard)
        # nothing published above reached the platform's view of every device topic
        marker = f"marker-{uuid.uuid4().hex}".encode()
        first_device = next(iter(devices))
        platform.connection.publish(feedback_topic(first_device), marker)
        # (in a whole test session the broker also holds other modules' devices' retained
        # statuses, which a subscription to every device topic receives first: not ours)
        ours = {topic_of(d) for d in devices for topic_of in TOPICS.values()}
        leaked = [m for m in platform.before(feedback_topic(first_device), marker)
                  if m.topic in ours]  # fmt: skip
        assert leaked == []
        # the platform answers every device; each receives its own only
        own = {}
        for device_id in devices:
            for other in devices:
                if other != device_id:
                    platform.connection.publish(feedback_topic(other), b'{"not": "yours"}')
            own[device_id] = f"own-{uuid.uuid4().hex}".encode()
            platform.connection.publish(feedback_topic(device_id), own[device_id])
        for device_id, inbox in devices.items():
            # the platform's own messages to it came first; every one on its own topic
            while (received := inbox.messages.get(timeout=WAIT_S)).payload != own[device_id]:
                assert received.topic == feedback_topic(device_id), received.topic
            assert received.topic == feedback_topic(device_id)
        # no retained status was left on any device's topic by another device
        fresh = Inbox(admin, f"iso-retained-{uuid.uuid4().hex[:6]}")
        try:
            for device_id in devices:
                fresh.connection.subscribe(status_topic(device_id))
            end = f"end-{uuid.uuid4().hex}".encode()
            fresh.connection.subscribe(feedback_topic(first_device))
            platform.connection.publish(feedback_topic(first_device), end)
            assert fresh.first_is(feedback_topic(first_device), end)
        finally:
            fresh.connection.close()
    finally:
        platform.connection.close()
    pairs = DEVICES * (DEVICES - 1)
    assert checks == pairs * len(TOPICS) * 2
    record_property("device_pairs", pairs)
    print(f"MQTT isolation: {pairs} device pairs, {checks} topic checks")
