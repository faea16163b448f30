"""10,000 hostile messages (tests/hostile.py, seeded) from a registered device through the real
broker into a real ingest worker: the worker never stops, stores a valid message sent after
them, and every hostile message is accounted for — kept whole with its reason in
rejected_readings, or logged in device_messages with each of its readings rejected with a
reason. What the broker itself refuses is counted apart (the publish raises)."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from api_fixtures import template_copy
from hostile import hostile_messages
from ingest_fixtures import Pilot, RunningWorker, message

from ehealthlab.contract.messages import MAX_PACKET_BYTES
from ehealthlab.contract.topics import readings_topic
from ehealthlab.errors import EhealthlabError
from ehealthlab.mqtt import PacketTooLargeError
from ehealthlab.mqtt.common import publish_packet_size

SEED = 20261206
COUNT = int(os.environ.get("EHEALTHLAB_HOSTILE_COUNT", "10000"))
WAIT_S = 600.0  # bounds a failure only: a loaded 2-core machine stores this in a minute or two


@pytest.fixture
def pilot(plain_admin_url, migrated_template, mosquitto_broker) -> Iterator[Pilot]:
    with template_copy(plain_admin_url, migrated_template) as database_url:
        made = Pilot(database_url, mosquitto_broker)
        try:
            yield made
        finally:
            made.cleanup()


def account(
    pilot: Pilot, device_id: str, sent: list[tuple[str, str, bytes]]
) -> tuple[Counter[str], Counter[str]]:
    """How each sent message was kept — 'whole: REASON', 'same bytes again, …', 'logged, each
    reading rejected' or 'lost' — and the reasons of the readings rejected one by one."""
    whole: dict[bytes, list[str]] = {}
    for payload, reason in pilot.query(
        "SELECT payload, reason FROM rejected_readings"
        " WHERE device_id = %s AND item_index IS NULL ORDER BY id",
        device_id,
    ):
        whole.setdefault(bytes(payload), []).append(reason)
    items: dict[str, list[str]] = {}
    for msg_id, reason in pilot.query(
        "SELECT msg_id, reason FROM rejected_readings"
        " WHERE device_id = %s AND item_index IS NOT NULL ORDER BY id",
        device_id,
    ):
        items.setdefault(msg_id, []).append(reason)
    logged = {
        msg_id: (readings, rejected)
        for msg_id, readings, rejected in pilot.query(
            "SELECT msg_id, readings, rejected FROM device_messages WHERE device_id = %s",
            device_id,
        )
    }
    # identical bytes without a msg_id are one message delivered again (ingest keeps it once
    # and counts the delivery): key of device_messages.content_digest, see migration 0032
    again = {
        bytes(digest): deliveries - 1
        for digest, deliveries in pilot.query(
            "SELECT content_digest, deliveries FROM device_messages"
            " WHERE device_id = %s AND msg_id IS NULL",
            device_id,
        )
    }
    topic = readings_topic(device_id).encode()
    first_reason: dict[bytes, str] = {}
    kept: Counter[str] = Counter()
    reading_reasons: Counter[str] = Counter()
    for _, msg_id, payload in sent:
        digest = hashlib.sha256(topic + b"\0" + payload).digest()[:16]
        if whole.get(payload):
            first_reason[payload] = whole[payload].pop()
            kept["whole: " + first_reason[payload]] += 1
        elif payload in first_reason and again.get(digest, 0) > 0:
            again[digest] -= 1
            kept["same bytes again, a delivery of: " + first_reason[payload]] += 1
        elif msg_id in logged and msg_id in items and logged[msg_id][0] == logged[msg_id][1]:
            kept["logged, each reading rejected"] += 1
            reading_reasons.update(items.pop(msg_id))
        else:
            kept["lost"] += 1
    return kept, reading_reasons


def test_ten_thousand_hostile_messages_crash_nothing_and_each_is_kept_with_a_reason(pilot):
    hostile = hostile_messages(SEED, COUNT)
    worker = RunningWorker(pilot.settings, f"ingest-hostile-{uuid.uuid4().hex[:6]}")
    device_id, password = pilot.register("pulse_oximeter")
    refused_by_broker: Counter[str] = Counter()
    sent = []
    try:
        with pilot.device(device_id, password) as device:
            for kind, msg_id, payload in hostile:
                try:
                    device.publish(readings_topic(device_id), payload, timeout=60)
                except EhealthlabError as refusal:
                    refused_by_broker[f"{kind}: {refusal}"] += 1
                else:
                    sent.append((kind, msg_id, payload))
            valid = [{"seq": 1, "metric": "spo2", "value": 97, "unit": "%",
                      "at": "2026-03-10T07:00:00+00:00"}]  # fmt: skip
            device.publish(readings_topic(device_id), message(valid, msg_id="after-the-storm"))
        stored = pilot.wait_for(
            "SELECT count(*) FROM readings WHERE device_id = %s", [(1,)], device_id, timeout=WAIT_S
        )
        assert stored == [(1,)], "the valid message after the hostile ones was not stored"
        assert worker.thread.is_alive(), "the ingest worker stopped"
        kept, reading_reasons = account(pilot, device_id, sent)
    finally:
        worker.close()
    by_kind = Counter(kind for kind, _, _ in hostile)
    print(f"\nsent {len(sent)} of {len(hostile)}; by kind {dict(by_kind)}")
    print(f"refused by the broker: {dict(refused_by_broker)}")
    print(f"kept: {dict(sorted(kept.items()))}; readings: {dict(sorted(reading_reasons.items()))}")
    assert kept["lost"] == 0, kept
    assert "whole: platform_error" not in kept, kept  # a crash of the parser, kept as one
    assert "platform_error" not in reading_reasons, reading_reasons
    assert sum(kept.values()) + sum(refused_by_broker.values()) == COUNT


def _utf8(text: str) -> bytes:
    return struct.pack("!H", len(text.encode())) + text.encode()


def _packet(first_byte: int, body: bytes) -> bytes:
    """An MQTT packet: fixed header with the remaining length as a variable byte integer."""
    length, encoded = len(body), bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | (128 if length else 0))
        if not length:
            return bytes([first_byte, *encoded]) + body


def _publish_as_a_careless_client(broker, device_id: str, password: str, payload: bytes) -> bytes:
    """Connect with MQTT 3.1.1 written by hand (a client that ignores any Maximum Packet
    Size), publish at QoS 0 and return what the broker sent back before closing."""
    connect = (
        b"\x00\x04MQTT\x04\xc2\x00\x1e" + _utf8(device_id) + _utf8(device_id) + _utf8(password)
    )
    with socket.create_connection((broker.host, broker.port), timeout=30) as sock:
        sock.sendall(_packet(0x10, connect))
        assert sock.recv(4) == b"\x20\x02\x00\x00", "the broker refused the connection"
        try:
            sock.sendall(_packet(0x30, _utf8(readings_topic(device_id)) + payload))
        except (BrokenPipeError, ConnectionResetError):
            return b""  # closed while we were still sending: the answer we expect
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


def test_the_brokers_packet_limit_bounds_a_message_and_what_is_under_it_is_still_kept(
    pilot, mosquitto_broker
):
    """The broker takes packets up to MAX_PACKET_BYTES and says so in its CONNACK: the
    platform's client refuses a bigger one before sending it (the connection stays up); one
    exactly at the limit reaches ingest, kept whole as payload_too_large; a client that sends
    a bigger one anyway is disconnected by the broker, which the log says, and nothing else
    is disturbed."""
    worker = RunningWorker(pilot.settings, f"ingest-packet-{uuid.uuid4().hex[:6]}")
    device_id, password = pilot.register("pulse_oximeter")
    topic = readings_topic(device_id)
    size = MAX_PACKET_BYTES - publish_packet_size(topic, b"", 1)
    size -= publish_packet_size(topic, b"x" * size, 1) - MAX_PACKET_BYTES  # a longer header
    at_limit = b"x" * size
    assert publish_packet_size(topic, at_limit, 1) == MAX_PACKET_BYTES
    try:
        with pilot.device(device_id, password) as device:
            assert device.max_packet_size == MAX_PACKET_BYTES
            with pytest.raises(PacketTooLargeError, match=f"at most {MAX_PACKET_BYTES}"):
                device.publish(topic, at_limit + b"x")
            device.publish(topic, at_limit, timeout=60)  # the broker took it: not too large
        log_offset = mosquitto_broker.log_file.stat().st_size
        answer = _publish_as_a_careless_client(
            mosquitto_broker, device_id, password, at_limit + b"x" * 1000
        )
        assert answer == b"", answer
        deadline = time.monotonic() + 30
        while True:
            with mosquitto_broker.log_file.open("rb") as log:
                log.seek(log_offset)
                said = log.read().decode(errors="replace")
            if f"Client {device_id} disconnected due to oversize packet" in said:
                break
            assert time.monotonic() < deadline, said
            time.sleep(0.1)
        with pilot.device(device_id, password) as device:
            valid = [{"seq": 1, "metric": "spo2", "value": 97, "unit": "%",
                      "at": "2026-03-10T07:00:00+00:00"}]  # fmt: skip
            device.publish(topic, message(valid, msg_id="after-the-big-one"))
        stored = pilot.wait_for(
            "SELECT count(*) FROM readings WHERE device_id = %s", [(1,)], device_id, timeout=120
        )
        assert stored == [(1,)]
        kept = pilot.query(
            "SELECT length(payload), reason FROM rejected_readings WHERE device_id = %s",
            device_id,
        )
        assert kept == [(len(at_limit), "payload_too_large")]
        assert worker.thread.is_alive(), "the ingest worker stopped"
    finally:
        worker.close()
