"""Ingest against a real broker and a real store: every reading lands once, none is lost."""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import psycopg
import pytest
from conftest import create_database, drop_database, with_database

from ehealthlab.contract.topics import (
    INGEST_SHARED_SUBSCRIPTION,
    feedback_topic,
    readings_topic,
)
from ehealthlab.gateway.dynsec import DynamicSecurity
from ehealthlab.ingest.alerts import DEFAULT_RULES
from ehealthlab.ingest.store_batch import store_judged
from ehealthlab.ingest.worker import IngestWorker
from ehealthlab.ingest.worker_config import IngestConfig
from ehealthlab.mqtt import BrokerAddress, MqttConnection, ReceivedMessage
from ehealthlab.settings import Settings
from ehealthlab.store.readings import ReadingWriter

T0 = datetime(2026, 3, 10, 7, 0, tzinfo=UTC)


def message(
    readings: list[dict], *, msg_id: str | None = None, sent_at: datetime | None = None
) -> bytes:
    return orjson.dumps(
        {
            "schema": "ehl.readings/1",
            "msg_id": msg_id or str(uuid.uuid4()),
            "sent_at": (sent_at or datetime.now(UTC)).isoformat(),
            "readings": readings,
        }
    )


def bp(
    seq: int, at: datetime, sys_: float = 130, dia: float = 85, unit: str = "mm[Hg]"
) -> list[dict]:
    stamp = at.isoformat()
    return [
        {"seq": seq, "metric": "bp_systolic", "value": sys_, "unit": unit, "at": stamp},
        {"seq": seq + 1, "metric": "bp_diastolic", "value": dia, "unit": unit, "at": stamp},
    ]


class Pilot:
    """A store, a broker with the platform role, and devices registered in both."""

    def __init__(self, database_url: str, broker) -> None:
        self.database_url = database_url
        self.admin = BrokerAddress(
            broker.host, broker.port, broker.admin_username, broker.admin_password
        )
        self.settings = Settings(
            database_url=database_url,
            mqtt_host=broker.host,
            mqtt_port=broker.port,
            mqtt_username=broker.admin_username,
            mqtt_password=broker.admin_password,
            state_dir="/nonexistent-ehealthlab-state",
        )
        with DynamicSecurity(self.admin) as dynsec:
            dynsec.ensure_platform_role(broker.admin_username)
        with psycopg.connect(database_url, autocommit=True) as conn:
            self.startup = conn.execute(
                "INSERT INTO organisations (kind, name) VALUES ('startup', 'Acme') RETURNING id"
            ).fetchone()[0]
        self.devices: list[str] = []

    def register(self, device_type: str = "blood_pressure_monitor") -> tuple[str, str]:
        device_id = f"bpm-{uuid.uuid4().hex[:10]}"
        password = secrets.token_hex(16)
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO devices (device_id, organisation_id, device_type, model, serial)"
                " VALUES (%s, %s, %s, 'M', %s)",
                (device_id, self.startup, device_type, device_id),
            )
        with DynamicSecurity(self.admin) as dynsec:
            dynsec.create_device_client(device_id, password)
        self.devices.append(device_id)
        return device_id, password

    def device(
        self, device_id: str, password: str, inbox: queue.Queue | None = None
    ) -> MqttConnection:
        connection = MqttConnection(
            self.admin.as_user(device_id, password),
            device_id,
            on_message=inbox.put if inbox is not None else None,
        )
        connection.connect()
        if inbox is not None:
            connection.subscribe(feedback_topic(device_id))
        return connection

    def query(self, sql: str, *params):
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(sql, params).fetchall()

    def wait_for(self, sql: str, expected, *params, timeout: float = 60.0):
        """Poll until the query returns `expected`; the timeout only bounds a failure."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.query(sql, *params)
            if got == expected or time.monotonic() > deadline:
                return got
            time.sleep(0.1)

    def cleanup(self) -> None:
        with DynamicSecurity(self.admin) as dynsec:
            for device_id in self.devices:
                dynsec.delete_device_client(device_id)


def pilot_on(admin_url: str, template: str, broker) -> Iterator[Pilot]:
    """A pilot in a copy of the migrated template, on `broker`; removed afterwards (the
    modules of ingest's tests make their `pilot` fixtures from it)."""
    name = create_database(admin_url, template=template)
    p = Pilot(with_database(admin_url, name), broker)
    try:
        yield p
    finally:
        p.cleanup()
        drop_database(admin_url, name)


@pytest.fixture
def pilot(plain_admin_url, migrated_template, mosquitto_broker) -> Iterator[Pilot]:
    yield from pilot_on(plain_admin_url, migrated_template, mosquitto_broker)


class RunningWorker:
    def __init__(self, settings: Settings, name: str, config: IngestConfig | None = None) -> None:
        self.worker = IngestWorker(settings, name, config)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop,), daemon=True)
        self.thread.start()
        # what is published before any ingest session exists is, by MQTT's rules, for nobody
        assert self.worker.subscribed.wait(15), "the worker did not subscribe"

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive()


@pytest.fixture
def workers(pilot) -> Iterator:
    started: list[RunningWorker] = []

    def start(name: str | None = None, config: IngestConfig | None = None) -> RunningWorker:
        started.append(
            RunningWorker(pilot.settings, name or f"ingest-{uuid.uuid4().hex[:6]}", config)
        )
        return started[-1]

    yield start
    for w in started:
        w.close()


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


def stream(device_id: str, count: int, per_message: int = 50, start_seq: int = 1) -> list[bytes]:
    """`count` distinct heart-rate readings in messages of `per_message`, one per minute."""
    messages = []
    for first in range(0, count, per_message):
        readings = [
            {
                "seq": start_seq + i,
                "metric": "heart_rate",
                "value": 60 + i % 40,
                "unit": "/min",
                "at": (T0 + timedelta(minutes=start_seq + i)).isoformat(),
            }
            for i in range(first, min(first + per_message, count))
        ]
        messages.append(message(readings, msg_id=f"{device_id}-{first}"))
    return messages


def publish_all(pilot: Pilot, device_id: str, password: str, payloads: list[bytes]) -> None:
    with pilot.device(device_id, password) as device:
        mids = [device.publish_nowait(readings_topic(device_id), p) for p in payloads]
        for mid in mids:
            assert device.wait_for(mid, timeout=30)


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


# --- bad input is kept with its reason, never crashes a worker --------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ehealthlab.ingest.pipeline import KnownDevice, judge, refuse  # noqa: E402
from ehealthlab.mqtt import ReceivedMessage as Received  # noqa: E402

NOW = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


def _received(payload: bytes, topic: str = "ehl/v1/devices/bpm-0001/readings") -> Received:
    return Received(topic, payload, 1, False, 1, NOW)


@given(
    st.one_of(
        st.binary(max_size=300),
        _JSON.map(lambda v: json.dumps(v).encode()),
    )
)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_payload_is_judged_without_raising_and_every_rejection_has_a_reason(payload):
    judged = judge(_received(payload), lambda device: KnownDevice("multiparameter_monitor"))
    outcome = judged.outcome
    assert outcome.accepted or outcome.rejected
    assert all(r.reason and r.detail for r in judged.rejections)
    assert len(judged.readings) == len(outcome.accepted)
    if outcome.message_rejection is not None:
        assert [r.payload for r in judged.rejections] == [payload]


@pytest.mark.parametrize(
    ("topic", "device"),
    [
        ("ehl/v1/devices/BAD_ID/readings", "unknown"),
        ("ehl/v1/devices/bpm-0001/readings", "bpm-0001"),
    ],
)
def test_a_wrong_topic_or_an_unknown_device_is_kept_whole(topic, device):
    judged = judge(_received(b'{"schema": "ehl.readings/1"}', topic), lambda device: None)
    [row] = judged.rejections
    assert (row.device_id, row.reason, row.payload) == (
        device,
        "schema_violation",
        b'{"schema": "ehl.readings/1"}',
    )


def _one_spo2(value: float) -> bytes:
    reading = {
        "seq": 1,
        "metric": "spo2",
        "value": value,
        "unit": "%",
        "at": "2026-03-10T08:00:00Z",
    }
    document = {
        "schema": "ehl.readings/1",
        "msg_id": "c",
        "sent_at": "2026-03-10T08:00:00Z",
        "readings": [reading],
    }
    return json.dumps(document).encode()  # the standard library writes NaN, as some devices do


CORPUS = {
    "truncated": (
        b'{"schema": "ehl.readings/1", "msg_id": "t", "readings": [{"seq": 1',
        "malformed_json",
    ),
    "not json": (b"\x00\xff\xfe garbage", "malformed_json"),
    "NaN": (_one_spo2(float("nan")), "malformed_json"),
    "wrong types": (
        b'{"schema": "ehl.readings/1", "msg_id": 7, "sent_at": true, "readings": "x"}',
        "schema_violation",
    ),
    "huge number": (_one_spo2(1e308), "out_of_range"),
    "huge seq": (_one_spo2(97).replace(b'"seq": 1', b'"seq": ' + b"9" * 30), "schema_violation"),
    # 14x the contract's 64 KiB, and still under the broker's 1 MiB packet limit
    "900 KiB": (b"[" + b"1," * (450 * 1024) + b"1]", "payload_too_large"),
}


def test_a_corpus_of_bad_messages_is_kept_with_reasons_and_the_worker_goes_on(pilot, workers):
    workers()
    device_id, password = pilot.register("multiparameter_monitor")
    with pilot.device(device_id, password) as device:
        for payload, _ in CORPUS.values():
            device.publish(readings_topic(device_id), payload, timeout=60)
        device.publish(
            readings_topic(device_id),
            message([{"seq": 2, "metric": "spo2", "value": 97, "unit": "%", "at": T0.isoformat()}]),
        )
    assert pilot.wait_for("SELECT count(*) FROM readings", [(1,)], timeout=30) == [(1,)]
    rows = pilot.query(
        "SELECT reason, payload_bytes, length(payload) FROM rejected_readings ORDER BY id"
    )
    assert [reason for reason, _, _ in rows] == [reason for _, reason in CORPUS.values()]
    assert [(size, kept) for _, size, kept in rows][-1] == (
        len(CORPUS["900 KiB"][0]),
    ) * 2  # all of it


def test_a_nul_byte_in_a_metric_never_sinks_its_neighbours(pilot, workers):
    workers()
    device_id, password = pilot.register("multiparameter_monitor")
    stamp = T0.isoformat()
    readings = [
        {"seq": 1, "metric": "spo2", "value": 97, "unit": "%", "at": stamp},
        {"seq": 2, "metric": "sp\u0000o2", "value": 97, "unit": "%", "at": stamp},
    ]
    with pilot.device(device_id, password) as device:
        device.publish(readings_topic(device_id), message(readings))
    assert pilot.wait_for("SELECT count(*) FROM readings", [(1,)]) == [(1,)]
    assert pilot.query("SELECT reason, metric, seq FROM rejected_readings") == [
        ("unknown_metric", None, 2)
    ]


def test_a_message_the_store_could_not_keep_is_filed_as_the_platforms_failure():
    judged = refuse(_received(b"{}"), "the store could not keep it: boom")
    assert judged.platform_failure
    assert [(r.reason, r.detail) for r in judged.rejections] == [
        ("platform_error", "the store could not keep it: boom")
    ]
    assert not judge(_received(b"{}"), lambda device: KnownDevice("thermometer")).platform_failure


def test_receive_time_is_the_brokers_even_when_the_message_waited_there(pilot, workers):
    """A message that waits in the broker while ingest is away keeps the time the platform
    received it: its clock offset is not inflated by the wait, and a publisher cannot forge
    the broker's stamp."""
    name = f"ingest-{uuid.uuid4().hex[:6]}"
    # an ingest session that went away without a word (a crash): the broker keeps its messages
    crashed = MqttConnection(pilot.admin, name, clean_start=False, session_expiry_s=600)
    crashed.connect()
    crashed.subscribe(INGEST_SHARED_SUBSCRIPTION)
    crashed.drop()
    device_id, password = pilot.register()
    device = pilot.device(device_id, password)
    try:
        sent = datetime.now(UTC)
        device.publish(readings_topic(device_id), message(bp(1, T0), sent_at=sent))
        forged = [("ehl-received-at", "0")]
        device.publish(
            readings_topic(device_id), message(bp(3, T0 + timedelta(hours=1))),
            user_properties=forged,
        )  # fmt: skip
        published = datetime.now(UTC)
        time.sleep(3)
        restarted = datetime.now(UTC)
        workers(name)
        rows = pilot.wait_for(
            "SELECT count(*) FROM readings WHERE device_id = %s", [(4,)], device_id
        )
        assert rows == [(4,)]
        stored = pilot.query(
            "SELECT seq, received_at, clock_offset_s FROM readings WHERE device_id = %s"
            " ORDER BY seq",
            device_id,
        )
    finally:
        device.close()
    for seq, received_at, offset in stored:
        # the broker's time of receipt, not the worker's (3 s later) nor the forged epoch
        assert sent - timedelta(seconds=1) <= received_at <= published + timedelta(seconds=1), seq
        assert received_at < restarted - timedelta(seconds=2)
        if seq == 1:
            # the device's clock is the machine's: its offset is at most the time the
            # publish took (measured, not assumed), never the 3 s the worker was away
            took = (published - sent).total_seconds()
            assert -took - 0.5 <= offset <= 0.5, (offset, took)


def test_a_backlog_lower_weight_raises_the_weight_gain_alert_of_a_later_measurement(pilot, workers):
    """The scale's backlog arrives after a newer weight: the alert is raised all the same, for
    the higher (later-measured) weight, when the lower one arrives."""
    workers()
    device_id, password = pilot.register("weighing_scale")
    with psycopg.connect(pilot.database_url, autocommit=True) as conn:
        provider = conn.execute(
            "INSERT INTO organisations (kind, name) VALUES ('provider', 'ASL TO4') RETURNING id"
        ).fetchone()[0]
        patient = conn.execute(
            "INSERT INTO patients (organisation_id, identifier_hash, label)"
            " VALUES (%s, '\\x01', 'P1') RETURNING id",
            (provider,),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO enrolments (patient_id, device_id, municipality, start_date)"
            " VALUES (%s, %s, '001003', '2026-03-01')",
            (patient, device_id),
        )

    def weight(seq: int, at: datetime, kg: float) -> bytes:
        item = {
            "seq": seq,
            "metric": "body_weight",
            "value": kg,
            "unit": "kg",
            "at": at.isoformat(),
        }
        return message([item])

    with pilot.device(device_id, password) as device:
        device.publish(readings_topic(device_id), weight(2, T0 + timedelta(days=1), 72.5))
        assert pilot.wait_for("SELECT count(*) FROM readings", [(1,)]) == [(1,)]
        assert pilot.query("SELECT count(*) FROM alerts") == [(0,)]
        device.publish(readings_topic(device_id), weight(1, T0, 70.0))  # the backlog
    raised = pilot.wait_for("SELECT count(*) FROM alerts", [(1,)])
    assert raised == [(1,)]
    [(rule, value, day, raised_at, backlog_received)] = pilot.query(
        "SELECT a.rule, a.value, a.day, a.raised_at, r.received_at FROM alerts a"
        " JOIN readings r ON r.device_id = a.device_id AND r.seq = 1"
    )
    assert (rule, value, day) == ("weight_gain", 72.5, (T0 + timedelta(days=1)).date())
    assert raised_at == backlog_received  # when the platform could first know


def test_only_a_simulated_device_may_state_its_receive_time(pilot, workers):
    """A simulator running on simulated time states the receive time in a user property;
    a real device saying the same is not believed (the broker's stamp counts)."""
    workers()
    real_id, real_password = pilot.register()
    simulated_id, simulated_password = pilot.register()
    with psycopg.connect(pilot.database_url, autocommit=True) as conn:
        conn.execute("UPDATE devices SET simulated = true WHERE device_id = %s", (simulated_id,))
    claimed = T0 + timedelta(seconds=30)
    claim = [("ehl-simulated-received-at", str(int(claimed.timestamp() * 1000)))]
    for device_id, password in ((real_id, real_password), (simulated_id, simulated_password)):
        with pilot.device(device_id, password) as device:
            device.publish(
                readings_topic(device_id), message(bp(1, T0), sent_at=T0 + timedelta(seconds=29)),
                user_properties=claim,
            )  # fmt: skip
    stored = "SELECT device_id, received_at, clock_corrected FROM readings WHERE seq = 1"
    assert pilot.wait_for("SELECT count(*) FROM readings WHERE seq = 1", [(2,)]) == [(2,)]
    got = {d: (r, c) for d, r, c in pilot.query(stored)}
    assert got[simulated_id] == (claimed, False)  # simulated time, clock judged right
    real_received, real_corrected = got[real_id]
    assert real_received > datetime.now(UTC) - timedelta(minutes=1)  # the broker's time
    assert real_corrected  # sent_at in March, received now: its clock is wrong


def test_two_batches_storing_one_patients_weights_at_once_still_raise_the_gain(
    plain_admin_url, migrated_template
):
    """Two workers (or MQTT and FHIR) each store one of a patient's weights at the same time:
    the second waits for the first's alert evaluation and sees its weight."""
    name = create_database(plain_admin_url, template=migrated_template)
    url = with_database(plain_admin_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        startup, provider = (
            conn.execute(
                "INSERT INTO organisations (kind, name) VALUES (%s, %s) RETURNING id", (k, k)
            ).fetchone()[0]
            for k in ("startup", "provider")
        )
        # two scales of one patient (at home and at the clinic, say): the batches share no
        # device, so no row of the store or of its rollups makes them wait on each other
        for scale in ("scale-1", "scale-2"):
            conn.execute(
                "INSERT INTO devices (device_id, organisation_id, device_type, model, serial)"
                " VALUES (%s, %s, 'weighing_scale', 'M', %s)",
                (scale, startup, scale),
            )
        patient = conn.execute(
            "INSERT INTO patients (organisation_id, identifier_hash, label)"
            " VALUES (%s, '\\x01', 'P1') RETURNING id",
            (provider,),
        ).fetchone()[0]
        for scale in ("scale-1", "scale-2"):
            conn.execute(
                "INSERT INTO enrolments (patient_id, device_id, municipality, start_date)"
                " VALUES (%s, %s, '001003', '2026-03-01')",
                (patient, scale),
            )
        # the month exists: only the alert evaluation can make the two batches wait
        conn.execute("SELECT ehl_ensure_reading_partitions(ARRAY[%s::timestamptz])", (T0,))

    def weight(scale: str, seq: int, at: datetime, kg: float):
        item = {"seq": seq, "metric": "body_weight", "value": kg, "unit": "kg",
                "at": at.isoformat()}  # fmt: skip
        received = ReceivedMessage(f"ehl/v1/devices/{scale}/readings",
                                   message([item], sent_at=at), 1, False, 0, at, True)  # fmt: skip
        return judge(received, lambda device: KnownDevice("weighing_scale"))

    low = weight("scale-1", 1, T0, 70.0)
    high = weight("scale-2", 1, T0 + timedelta(days=1), 72.5)
    try:
        with psycopg.connect(url) as first, psycopg.connect(url) as second:
            errors: list[BaseException] = []

            def other_worker() -> None:
                try:
                    store_judged(second, ReadingWriter(second), [high], DEFAULT_RULES)
                except BaseException as exc:  # reported below
                    errors.append(exc)

            thread = threading.Thread(target=other_worker)
            with first.transaction():  # the first batch is still open ...
                store_judged(first, ReadingWriter(first), [low], DEFAULT_RULES)
                thread.start()  # ... while the second stores its weight (or waits for it)
                with psycopg.connect(url, autocommit=True) as watcher:
                    waiting, deadline = 0, time.monotonic() + 120  # bounds a failure only
                    while thread.is_alive() and time.monotonic() < deadline:
                        waiting = watcher.execute(
                            "SELECT count(*) FROM pg_locks"
                            " WHERE locktype = 'advisory' AND NOT granted"
                        ).fetchone()[0]
                        if waiting:
                            break
                        time.sleep(0.02)
                    # the window reached, not assumed: the second batch waits on the first
                    assert waiting, "the second batch did not wait for the first's alerts"
            thread.join(30)
            assert not errors, errors
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM readings").fetchone() == (2,)
            alerts = conn.execute("SELECT rule, value FROM alerts").fetchall()
        assert alerts == [("weight_gain", 72.5)]
    finally:
        drop_database(plain_admin_url, name)
