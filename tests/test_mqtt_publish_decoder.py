"""The fast MQTT 5 PUBLISH decoder (ehealthlab.mqtt.publish_decoder): packets laid out by
hand from the standard (§3.3), and generated packets decoded by it and by paho's own decoder,
which must agree wherever this one answers."""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ehealthlab.mqtt.publish_decoder import DecodedPublish, UnusualPacketError, decode_publish


def string(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def packet(topic: bytes, properties: bytes, payload: bytes, mid: int | None = 7) -> bytes:
    """Topic, packet identifier (None at QoS 0), properties (their length prepended when
    under 128 bytes), payload."""
    mid_bytes = b"" if mid is None else struct.pack("!H", mid)
    return string(topic) + mid_bytes + bytes([len(properties)]) + properties + payload


QOS1 = 0x32  # PUBLISH, QoS 1
STAMP = b"\x26" + string(b"ehl-received-at") + string(b"1765000000123")


def publish(topic: str, payload: bytes, user_properties=(), *, mid=7, qos=1, retain=False,
            dup=False) -> DecodedPublish:  # fmt: skip
    return DecodedPublish(topic, mid, qos, retain, dup, payload, list(user_properties))


STAMPED = [("ehl-received-at", "1765000000123")]


@pytest.mark.parametrize(
    ("header", "data", "expected"),
    [
        (0x30, packet(b"a/b", b"", b"{}", mid=None), publish("a/b", b"{}", mid=0, qos=0)),
        (QOS1, packet(b"a", b"", b""), publish("a", b"")),
        (0x33, packet(b"a", b"", b"x"), publish("a", b"x", retain=True)),
        (0x3A, packet(b"a", b"", b"x"), publish("a", b"x", dup=True)),
        (QOS1, packet(b"a", STAMP, b"x"), publish("a", b"x", STAMPED)),
        # the order of repeated user properties is kept (the broker's stamp comes last)
        (QOS1, packet(b"a", b"\x26" + string(b"k") + string(b"1") + STAMP, b""),
         publish("a", b"", [("k", "1"), *STAMPED])),
        # the other PUBLISH properties are read past: format indicator, expiry, content
        # type, response topic, correlation data, subscription identifiers (two, one of
        # them two bytes long), topic alias
        (QOS1, packet(b"t", b"\x01\x01" + b"\x02\x00\x00\x0e\x10" + b"\x03" + string(b"json")
                      + b"\x08" + string(b"r/t") + b"\x09" + string(b"\x00\xff")
                      + b"\x0b\x05" + b"\x0b\x80\x01" + b"\x23\x00\x02" + STAMP, b"p"),
         publish("t", b"p", STAMPED)),
        # U+FEFF is allowed and kept ([MQTT-1.5.4-3]); paho refuses it
        (QOS1, packet("è/\ufeff".encode(), b"\x26" + string("\ufeffk".encode())
                      + string(b"v"), b""), publish("è/\ufeff", b"", [("\ufeffk", "v")])),
        # a property length of 128 takes two bytes
        (QOS1, string(b"a") + b"\x00\x07" + b"\x80\x01" + b"\x26" + string(b"k")
         + string(b"v" * 122) + b"!", publish("a", b"!", [("k", "v" * 122)])),
    ],
)  # fmt: skip
def test_decodes_what_the_standard_lays_out(header, data, expected):
    assert decode_publish(header, data) == expected


@pytest.mark.parametrize(
    ("header", "data", "why"),
    [
        (0x36, packet(b"a", b"", b""), "QoS 3"),
        (QOS1, b"\x00", "no topic length"),
        (QOS1, b"\x00\x05ab", "topic runs past the packet"),
        (QOS1, packet(b"", b"\x23\x00\x01", b""), "empty topic (a topic alias)"),
        (QOS1, packet(b"\xff", b"", b""), "not UTF-8"),
        (QOS1, packet(b"a\x00", b"", b""), "U+0000 in a string"),
        (QOS1, string(b"a") + b"\x00", "no packet identifier"),
        (QOS1, string(b"a") + b"\x00\x01" + b"\x05\x26", "properties run past the packet"),
        (QOS1, packet(b"a", b"\x27\x00\x00\x00\x01", b""), "property 0x27"),  # not PUBLISH's
        (QOS1, packet(b"a", b"\x01\x00\x01\x01", b""), "property 0x1 repeated"),
        (QOS1, packet(b"a", b"\x02\x00\x00", b"xx"), "a property runs past the property length"),
        (QOS1, packet(b"a", b"\x26\x00\x05ab", b"xyz"), "a string runs past the property length"),
        (QOS1, packet(b"a", b"\x26\x00", b""), "no string length"),
        (QOS1, packet(b"a", b"\x26" + string(b"k") + string(b"\xc3"), b""), "not UTF-8"),
        (QOS1, packet(b"a", b"\x0b\x80\x80\x80\x80\x01", b""), "longer than 4 bytes"),
        (QOS1, packet(b"a", b"\x0b\x80", b"zz"), "runs past its bounds"),
    ],
)
def test_leaves_to_paho_what_it_does_not_fully_understand(header, data, why):
    with pytest.raises(UnusualPacketError, match=re.escape(why)):
        decode_publish(header, data)


# -- against paho's own decoder, over generated packets -------------------------------------

# MQTT strings: any character but U+0000 (surrogates cannot be encoded)
mqtt_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                    max_size=20)  # fmt: skip


@st.composite
def publish_properties(draw: st.DrawFn) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if draw(st.booleans()):
        properties.PayloadFormatIndicator = draw(st.integers(0, 1))
    if draw(st.booleans()):
        properties.MessageExpiryInterval = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        properties.ContentType = draw(mqtt_text)
    if draw(st.booleans()):
        properties.ResponseTopic = draw(mqtt_text)
    if draw(st.booleans()):
        properties.CorrelationData = draw(st.binary(max_size=20))
    for identifier in draw(st.lists(st.integers(1, 268_435_455), max_size=3)):
        properties.SubscriptionIdentifier = identifier
    if draw(st.booleans()):
        properties.TopicAlias = draw(st.integers(1, 65_535))
    pairs = draw(st.lists(st.tuples(mqtt_text, mqtt_text), max_size=4))
    if pairs:
        properties.UserProperty = pairs
    return properties


def assert_paho_agrees(ours: DecodedPublish, header: int, data: bytes) -> None:
    """paho decodes `data` to what `ours` says, or refuses it for a U+FEFF only."""
    try:
        theirs = _packet.decode_publish(header, data, MQTTProtocolVersion.MQTTv5)
    except Exception:  # paho refuses U+FEFF, which the standard allows
        assert "\ufeff".encode() in data
        return
    assert ours.topic == theirs.topic.decode()
    assert (ours.mid, ours.qos, ours.retain, ours.dup) == (
        theirs.mid, theirs.qos, theirs.retain, theirs.dup,
    )  # fmt: skip
    assert ours.user_properties == getattr(theirs.properties, "UserProperty", [])
    assert ours.payload == theirs.payload


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    topic=mqtt_text.filter(bool),
    qos=st.integers(0, 1),
    retain=st.booleans(),
    dup=st.booleans(),
    mid=st.integers(1, 65_535),
    properties=publish_properties(),
    payload=st.binary(max_size=300),
)
def test_agrees_with_paho_on_every_publish_paho_packs(
    *, topic, qos, retain, dup, mid, properties, payload
):
    header = 0x30 | (dup << 3) | (qos << 1) | retain
    data = (
        string(topic.encode())
        + (struct.pack("!H", mid) if qos else b"")
        + properties.pack()  # type: ignore[no-untyped-call]
        + payload
    )
    assert_paho_agrees(decode_publish(header, data), header, data)


@settings(max_examples=1000)
@given(header=st.sampled_from([0x30, 0x32, 0x33, 0x3A]), data=st.binary(max_size=60))
def test_on_arbitrary_bytes_it_answers_as_paho_or_leaves_them_to_paho(header, data):
    try:
        ours = decode_publish(header, data)
    except UnusualPacketError:
        return  # paho decides, as before this decoder
    assert_paho_agrees(ours, header, data)
