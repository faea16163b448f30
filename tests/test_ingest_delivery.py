"""Ingest against a real broker and a real store: readings land (a wrong unit rejected with
feedback to the device), and each is stored once whatever arrives twice: a message delivered
or sent again, a msg_id reused for other readings, malformed bytes retried, and 10,000
readings with duplicates and redeliveries shared by two workers."""

from __future__ import annotations

import queue
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from ingest_fixtures import T0, bp, message, pilot, publish_all, stream, workers

from ehealthlab.contract.topics import readings_topic
from ehealthlab.ingest.alerts import DEFAULT_RULES
from ehealthlab.ingest.pipeline import KnownDevice, judge
from ehealthlab.ingest.store_batch import store_judged
from ehealthlab.mqtt import ReceivedMessage
from ehealthlab.store.readings import ReadingWriter

__all__ = ["pilot", "workers"]


def test_readings_land_and_a_wrong_unit_is_rejected_with_feedback(pilot, workers):
    workers()
    device_id, password = pilot.register()
    feedback: queue.Queue[ReceivedMessage] = queue.Queue()
    device = pilot.device(device_id, password, feedback)
    try:
        device.publish(readings_topic(device_id), message(bp(1, T0)))
        later = T0 + timedelta(hours=1)
        pulse = {
            "seq": 5,
            "metric": "heart_rate",
            "value": 72,
            "unit": "bpm",
            "at": later.isoformat(),
        }
        bad = message([*bp(3, later), pulse], msg_id="with-a-bad-unit")
        device.publish(readings_topic(device_id), bad)
        answer = orjson.loads(feedback.get(timeout=15).payload)
    finally:
        device.close()
    assert answer["msg_id"] == "with-a-bad-unit"
    assert answer["accepted"] == 2
    [rejected] = answer["rejected"]
    assert (rejected["index"], rejected["seq"], rejected["reason"]) == (2, 5, "unit_mismatch")
    assert "/min" in rejected["detail"]
    stored = pilot.wait_for("SELECT count(*) FROM readings", [(4,)])
    assert stored == [(4,)]
    assert pilot.query("SELECT reason, seq, msg_id FROM rejected_readings") == [
        ("unit_mismatch", 5, "with-a-bad-unit")
    ]
    assert pilot.query(
        "SELECT qos, readings, accepted, rejected FROM device_messages ORDER BY id"
    ) == [(1, 2, 2, 0), (1, 3, 2, 1)]
    assert pilot.query(
        "SELECT last_seen_at IS NOT NULL FROM devices WHERE device_id = %s", device_id
    ) == [(True,)]


def test_a_message_delivered_again_is_stored_and_logged_once(pilot, workers):
    """The same msg_id again is the same message (a broker redelivery, a device retrying a
    publish): logged once with its delivery count, not counted as duplicates. Readings
    re-sent in a new message are the device's duplicates, and counted."""
    workers()
    device_id, password = pilot.register()
    device = pilot.device(device_id, password)
    payload = message(bp(10, T0), msg_id="same-message")
    try:
        for _ in range(3):
            device.publish(readings_topic(device_id), payload)
        device.publish(readings_topic(device_id), message(bp(10, T0), msg_id="a-new-message"))
    finally:
        device.close()
    logged = "SELECT msg_id, deliveries, accepted, duplicates FROM device_messages ORDER BY msg_id"
    expected = [("a-new-message", 1, 0, 2), ("same-message", 3, 2, 0)]
    assert pilot.wait_for(logged, expected) == expected
    assert pilot.query("SELECT count(*) FROM readings") == [(2,)]
    assert pilot.query("SELECT msg_id, count(*) FROM duplicate_readings GROUP BY 1") == [
        ("a-new-message", 2)
    ]


def test_a_message_sent_again_with_a_later_sent_at_is_a_redelivery(pilot, workers):
    """Contract v1.1: a resend refreshes sent_at (an old one would read as a wrong clock);
    the same msg_id and readings are the same message whatever sent_at says. Nothing is
    counted twice, and the stored copy keeps its receive time and clock offset."""
    workers()
    device_id, password = pilot.register()
    readings = bp(10, T0)
    first = message(readings, msg_id="resent", sent_at=datetime.now(UTC))
    # the resend arrives with a sent_at ten minutes on (an outage, a device restarted): it
    # would be a wrong clock (> 120 s) if it were believed
    resend = message(readings, msg_id="resent", sent_at=datetime.now(UTC) + timedelta(minutes=10))
    with pilot.device(device_id, password) as device:
        device.publish(readings_topic(device_id), first)
        logged = "SELECT msg_id, deliveries, accepted, duplicates FROM device_messages"
        assert pilot.wait_for(logged, [("resent", 1, 2, 0)]) == [("resent", 1, 2, 0)]
        before = pilot.query("SELECT received_at, clock_offset_s FROM device_messages")
        device.publish(readings_topic(device_id), resend)
    assert pilot.wait_for(logged, [("resent", 2, 2, 0)]) == [("resent", 2, 2, 0)]
    assert pilot.query("SELECT received_at, clock_offset_s FROM device_messages") == before
    assert abs(before[0][1]) < 60
    assert pilot.query("SELECT count(*), bool_or(clock_corrected) FROM readings") == [(2, False)]
    assert pilot.query("SELECT count(*) FROM duplicate_readings") == [(0,)]


def test_a_known_msg_id_with_other_readings_is_a_new_message(pilot, workers):
    """A msg_id reused for other readings is another message: its readings already stored
    are the device's duplicates (counted), the others are stored."""
    workers()
    device_id, password = pilot.register()
    later = T0 + timedelta(hours=1)
    with pilot.device(device_id, password) as device:
        device.publish(readings_topic(device_id), message(bp(1, T0), msg_id="reused"))
        logged = "SELECT count(*) FROM device_messages"
        assert pilot.wait_for(logged, [(1,)]) == [(1,)]
        device.publish(
            readings_topic(device_id), message([*bp(1, T0), *bp(3, later)], msg_id="reused")
        )
    expected = [("reused", 1, 2, 0), ("reused", 1, 2, 2)]
    rows = "SELECT msg_id, deliveries, accepted, duplicates FROM device_messages ORDER BY id"
    assert pilot.wait_for(rows, expected) == expected
    assert pilot.query("SELECT count(*) FROM readings") == [(4,)]
    assert pilot.query("SELECT msg_id, count(*) FROM duplicate_readings GROUP BY 1") == [
        ("reused", 2)
    ]


def test_messages_logged_before_contract_1_1_are_still_known_by_their_bytes(pilot):
    """Rows logged before migration 0015 carry a digest of the payload's bytes only; the
    same bytes delivered again after the upgrade are still one message."""
    device_id, _ = pilot.register()
    payload = message(bp(1, T0), msg_id="from-before", sent_at=T0)
    received = ReceivedMessage(readings_topic(device_id), payload, 1, False, 0, T0, True)
    judged = judge(received, lambda device: KnownDevice("blood_pressure_monitor"))
    with psycopg.connect(pilot.database_url) as conn:
        store_judged(conn, ReadingWriter(conn), [judged], DEFAULT_RULES)
        conn.execute(  # what the row looked like before the migration
            "UPDATE device_messages"
            " SET payload_digest = substr(sha256(%s), 1, 16), content_digest = NULL",
            (payload,),
        )
        conn.commit()
        again = store_judged(conn, ReadingWriter(conn), [judged], DEFAULT_RULES)
    assert again.redeliveries == 1
    assert pilot.query("SELECT msg_id, deliveries, duplicates FROM device_messages") == [
        ("from-before", 2, 0)
    ]
    assert pilot.query("SELECT count(*) FROM duplicate_readings") == [(0,)]


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\xff not json",
        b'{"schema": "ehl.readings/1", "sent_at": "2026-03-10T08:00:00Z", "readings": []}',
    ],
    ids=["not json", "no msg_id"],
)
def test_a_malformed_message_delivered_again_is_logged_and_dead_lettered_once(pilot, payload):
    """Without a msg_id a message is known by its device, topic and bytes: the broker handing
    it over again (committed, not yet acknowledged) or the device retrying adds a delivery,
    not a second log row or dead letter; other bytes are another message."""
    device_id, _ = pilot.register()
    received = ReceivedMessage(readings_topic(device_id), payload, 1, False, 0, T0, True)
    judged = judge(received, lambda device: KnownDevice("blood_pressure_monitor"))
    other = judge(
        replace(received, payload=payload + b" "),
        lambda device: KnownDevice("blood_pressure_monitor"),
    )
    with psycopg.connect(pilot.database_url) as conn:
        first = store_judged(conn, ReadingWriter(conn), [judged, judged], DEFAULT_RULES)
        again = store_judged(conn, ReadingWriter(conn), [judged, other], DEFAULT_RULES)
    assert (first.redeliveries, first.rejected) == (1, 1)
    assert (again.redeliveries, again.rejected) == (1, 1)
    assert pilot.query(
        "SELECT msg_id, deliveries, payload_bytes FROM device_messages ORDER BY payload_bytes"
    ) == [(None, 3, len(payload)), (None, 1, len(payload) + 1)]
    assert pilot.query("SELECT count(*), count(DISTINCT payload) FROM rejected_readings") == [
        (2, 2)
    ]


def test_a_device_retrying_a_malformed_message_is_told_once_and_logged_once(pilot, workers):
    workers()
    device_id, password = pilot.register()
    feedback: queue.Queue[ReceivedMessage] = queue.Queue()
    with pilot.device(device_id, password, feedback) as device:
        for _ in range(3):
            device.publish(readings_topic(device_id), b"{ not json")
        device.publish(readings_topic(device_id), message(bp(1, T0)))
    logged = "SELECT msg_id IS NULL, deliveries FROM device_messages ORDER BY 1"
    assert pilot.wait_for(logged, [(False, 1), (True, 3)]) == [(False, 1), (True, 3)]
    assert pilot.query("SELECT reason, count(*) FROM rejected_readings GROUP BY 1") == [
        ("malformed_json", 1)
    ]


# --- exactly once, whatever happens ----------------------------------------------------------


def test_ten_thousand_readings_with_duplicates_and_redeliveries_are_stored_exactly_once(
    pilot, workers
):
    workers(), workers()  # two workers share the subscription
    device_id, password = pilot.register("multiparameter_monitor")
    payloads = stream(device_id, 10_000)
    redelivered = payloads[::7] + payloads[:20]  # the same messages again (same msg_id)
    # a device resending part of its backlog in new messages
    resent = [orjson.loads(p) for p in payloads[3::11]]
    for body in resent:
        body["msg_id"] = f"resent-{body['msg_id']}"
    publish_all(pilot, device_id, password,
                payloads + redelivered + [orjson.dumps(b) for b in resent])  # fmt: skip
    resent_readings = sum(len(b["readings"]) for b in resent)
    assert pilot.wait_for("SELECT count(*) FROM readings", [(10_000,)], timeout=60) == [(10_000,)]
    assert pilot.wait_for("SELECT count(*) FROM duplicate_readings", [(resent_readings,)]) == [
        (resent_readings,)
    ]
    deliveries = len(payloads) + len(redelivered) + len(resent)
    assert pilot.wait_for(
        "SELECT count(*), sum(deliveries) FROM device_messages",
        [(len(payloads) + len(resent), deliveries)],
    ) == [(len(payloads) + len(resent), deliveries)]
    assert pilot.query("SELECT count(DISTINCT seq), min(seq), max(seq) FROM readings") == [
        (10_000, 1, 10_000)
    ]
    assert pilot.query("SELECT sum(readings) FROM readings_hourly") == [(10_000,)]
