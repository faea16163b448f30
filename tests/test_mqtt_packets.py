"""The size of a PUBLISH packet as MQTT 5 counts it (what a broker's Maximum Packet Size
bounds), worked out by hand from the standard's layout (§2.1.4, §3.3): fixed header byte,
remaining length as a variable byte integer, topic with its 2-byte length, packet id at QoS 1
and 2, properties with their length, payload. The broker's own count is checked against it at
the limit in tests/test_ingest_hostile.py."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ehealthlab.mqtt.common import publish_packet_size


@pytest.mark.parametrize(
    ("topic", "payload_bytes", "qos", "user_properties", "expected"),
    [
        ("a", 0, 0, [], 1 + 1 + (2 + 1 + 1)),
        ("a", 0, 1, [], 1 + 1 + (2 + 1 + 2 + 1)),
        ("è", 0, 0, [], 1 + 1 + (2 + 2 + 1)),  # the topic's UTF-8 bytes, not its characters
        ("a", 123, 0, [], 1 + 1 + 127),  # remaining length 127: one byte
        ("a", 124, 0, [], 1 + 2 + 128),  # 128: two bytes
        ("a", 16_379, 0, [], 1 + 2 + 16_383),  # the largest with two
        ("a", 16_380, 0, [], 1 + 3 + 16_384),
        # property length 7, then 0x26, "a" and "b" as UTF-8 strings
        ("a", 0, 1, [("a", "b")], 1 + 1 + (2 + 1 + 2 + 1 + 7)),
    ],
)
def test_publish_packet_size(topic, payload_bytes, qos, user_properties, expected):
    properties = None
    if user_properties:
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = user_properties
    assert publish_packet_size(topic, b"x" * payload_bytes, qos, properties) == expected
